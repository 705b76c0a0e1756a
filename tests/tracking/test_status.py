"""How a trial's run ended, decided on plain data (no Tune, no MLflow)."""

import pytest

from rlsweep.tracking.status import (
    STOPPED_EARLY_REASON,
    Outcome,
    RunStatus,
    at_experiment_end,
    completed,
    failed,
)


def test_each_status_ends_its_mlflow_run_as_the_ui_should_show_it():
    assert [s.mlflow_status for s in RunStatus] == [None, "FINISHED", "FINISHED", "KILLED", "FAILED"]
    assert [s for s in RunStatus if s.done] == [RunStatus.FINISHED, RunStatus.STOPPED_EARLY, RunStatus.ERROR]
    assert RunStatus.STOPPED_EARLY == "stopped early" and str(RunStatus.ERROR) == "error"  # the tag's text


def test_a_completed_trial_finished_only_where_it_met_a_stop_criterion():
    assert completed("reached target return 475") == Outcome(RunStatus.FINISHED, "reached target return 475")
    assert completed(None) == Outcome(RunStatus.STOPPED_EARLY, STOPPED_EARLY_REASON)
    assert failed("ValueError: loss is nan") == Outcome(RunStatus.ERROR, "ValueError: loss is nan")


def end(status, started=False, ended=False, result=True, budget=None, elapsed=0.0):
    return at_experiment_end(tune_status=status, started_here=started, ended_here=ended, has_result=result,
                             time_budget_s=budget, elapsed_s=elapsed)


@pytest.mark.parametrize("case, outcome", [
    # what ended in this process has its outcome already
    (dict(status="TERMINATED", started=True, ended=True), None),
    (dict(status="ERROR", started=True, ended=True), None),
    # finished or failed before a resume: left as it is
    (dict(status="TERMINATED"), None),
    (dict(status="ERROR"), None),
    # Ctrl-C: Tune marks what it stopped TERMINATED, but never completed it
    (dict(status="TERMINATED", started=True), Outcome(RunStatus.INTERRUPTED)),
    (dict(status="RUNNING", started=True), Outcome(RunStatus.INTERRUPTED)),
    (dict(status="PAUSED"), Outcome(RunStatus.INTERRUPTED)),
    # a trial that waited for resources and never ran
    (dict(status="TERMINATED", result=False), Outcome(RunStatus.INTERRUPTED)),
    (dict(status="PENDING", result=False), Outcome(RunStatus.INTERRUPTED)),
    # the sweep's time budget cut it: stopped early, not resumable
    (dict(status="TERMINATED", started=True, budget=60.0, elapsed=61.0),
     Outcome(RunStatus.STOPPED_EARLY, "the sweep's time budget of 60 s ended")),
    (dict(status="TERMINATED", started=True, budget=60.0, elapsed=10.0), Outcome(RunStatus.INTERRUPTED)),
    (dict(status="RUNNING", started=True, budget=60.0, elapsed=61.0), Outcome(RunStatus.INTERRUPTED)),
])
def test_how_a_trial_stands_when_the_tune_run_ends(case, outcome):
    assert end(**case) == outcome
