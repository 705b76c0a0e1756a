"""How a run ended: rlsweep's statuses, and the decision of each trial's, as pure functions over plain data.

The Tune callback hands in what Tune said of a trial (its status string, whether it completed, failed
or was started in this process) and records what comes out; nothing here imports Tune or MLflow, so
every branch is tested on plain values (tests/tracking/test_status.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RunStatus(str, Enum):
    """A run's `rlsweep.status` tag; each maps to the MLflow run status the UI shows."""

    RUNNING = "running"
    FINISHED = "finished"  # met its stop criteria
    STOPPED_EARLY = "stopped early"  # by the scheduler or the sweep's time budget
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, or the store went away: `rlsweep resume` goes on
    ERROR = "error"

    @property
    def mlflow_status(self) -> str | None:
        """The MLflow run status that ends a run with this status (None: the run goes on)."""
        return _MLFLOW[self]

    @property
    def done(self) -> bool:
        """Whether the trial is over for good (a resume does not run it again)."""
        return self in (RunStatus.FINISHED, RunStatus.STOPPED_EARLY, RunStatus.ERROR)

    def __str__(self) -> str:
        return self.value


_MLFLOW = {RunStatus.RUNNING: None, RunStatus.FINISHED: "FINISHED", RunStatus.STOPPED_EARLY: "FINISHED",
           RunStatus.INTERRUPTED: "KILLED", RunStatus.ERROR: "FAILED"}

STOPPED_EARLY_REASON = "stopped before its stop criteria, by the scheduler or the sweep's time budget"

# Tune's trial statuses, as strings (the callback reads `Trial.status`)
TUNE_TERMINATED, TUNE_ERROR = "TERMINATED", "ERROR"


@dataclass(frozen=True)
class Outcome:
    """How one run ended: its status and why (None where the status says it all)."""

    status: RunStatus
    reason: str | None = None


def completed(stop_reason: str | None) -> Outcome:
    """A trial Tune completed: finished where it met a stop criterion (`stop_reason`), else stopped
    early (the scheduler, or the sweep's time budget, ended it first)."""
    if stop_reason:
        return Outcome(RunStatus.FINISHED, stop_reason)
    return Outcome(RunStatus.STOPPED_EARLY, STOPPED_EARLY_REASON)


def failed(error: str) -> Outcome:
    """A trial that failed for good (Tune retries no more): an error, with its one line."""
    return Outcome(RunStatus.ERROR, error)


def at_experiment_end(*, tune_status: str, started_here: bool, ended_here: bool, has_result: bool,
                      time_budget_s: float | None, elapsed_s: float, why: str | None = None) -> Outcome | None:
    """How a trial stands once the Tune run ends, where Tune cut it short; None where it had ended
    already (completed or failed here, or before a resume).

    Tune marks the trials it stops on Ctrl-C TERMINATED, as if they had finished, but never completes
    them: a trial started here that did not end here was cut short, and so was one that never started
    (it waited for resources: no result). A TERMINATED trial with a result that did not start here
    finished before a resume. A trial the sweep's time budget cut short stopped early; every other
    cut-short trial is interrupted (`rlsweep resume` picks it up again).

    Args:
        tune_status: Tune's status of the trial (`Trial.status`).
        started_here: its run was opened by this process.
        ended_here: Tune completed or failed it in this process.
        has_result: it reported at least one training iteration (in this process or before).
        time_budget_s: the sweep's time budget, if any.
        elapsed_s: how long this Tune run has gone on.
        why: what stopped the run, where rlsweep stopped it (a full disk); None for Ctrl-C and SIGTERM.

    Returns:
        The outcome to record, or None.
    """
    cut = (tune_status not in (TUNE_TERMINATED, TUNE_ERROR) or (started_here and not ended_here)
           or (tune_status == TUNE_TERMINATED and not ended_here and not has_result))
    if not cut:
        return None
    if tune_status == TUNE_TERMINATED and time_budget_s is not None and elapsed_s >= time_budget_s:
        return Outcome(RunStatus.STOPPED_EARLY, f"the sweep's time budget of {time_budget_s:g} s ended")
    return Outcome(RunStatus.INTERRUPTED, why)
