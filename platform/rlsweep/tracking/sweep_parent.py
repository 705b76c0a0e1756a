"""A sweep's parent run in MLflow: found or created when the sweep starts, summarised when it ends.

The Tune callback (`callback.py`) logs the trials; what only a sweep has (the parent run, its params,
the report of `report.py`) is here, so that `rlsweep train` runs the same callback without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlsweep import metrics as M
from rlsweep.tracking import report
from rlsweep.tracking.store import (
    TAG_DESCRIPTION,
    TAG_DIR,
    TAG_KIND,
    TAG_STATUS,
    TAG_TRIAL,
    Tracker,
    searched_values,
)


@dataclass
class SweepParent:
    """Settings of one sweep's parent run (plain data: Tune pickles it with the callback)."""

    name: str  # the sweep's name, also the parent run's name
    run_dir: str  # the sweep directory (the runs' `rlsweep.dir` tag)
    metric: str
    mode: str
    searched: list[str]  # the search space's parameter names
    params: dict[str, Any] = field(default_factory=dict)  # the parent run's params
    study: tuple[str, str] | None = None  # Optuna (storage URL, study name), for parameter importance
    time_budget_s: float | None = None  # the sweep's time budget (trials it cuts short stopped early)

    def open(self, tracker: Tracker) -> tuple[str, bool]:
        """The parent run's id, and whether it already existed (a resumed sweep)."""
        run_id = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: self.run_dir})
        if run_id is not None:
            tracker.reopen(run_id)
            return run_id, True
        run_id = tracker.start(self.name, {TAG_KIND: "sweep", TAG_DIR: self.run_dir, TAG_STATUS: "running",
                                           TAG_DESCRIPTION: f"Sweep {self.name} over {', '.join(self.searched)}: "
                                           f"{self.mode} {self.metric}. Its params and metrics are its best trial's."})
        tracker.log_params(run_id, self.params)
        return run_id, False

    @staticmethod
    def warm_up() -> None:
        report.warm_up()

    def finish(self, tracker: Tracker, run_id: str, trials: list[Any], runs: dict[str, str]) -> None:
        """Writes the summary (results table, best config, plots) and marks the sweep finished.
        `runs` maps trial ids to run ids; trials finished before a resume are looked up by tag."""
        kind = {TAG_KIND: "trial", TAG_DIR: self.run_dir}
        all_runs = {t.trial_id: runs.get(t.trial_id) or tracker.find(**kind, **{TAG_TRIAL: t.trial_id})
                    for t in trials}
        best = report.sweep_summary(tracker, run_id, trials, all_runs, metric=self.metric, mode=self.mode,
                                    params=self.searched, name=self.name, study=self.study)
        if best is not None:  # the parent's row in the runs table reads as the sweep's answer
            logged = tracker.params(run_id)  # params are write-once: a summary written again keeps the first
            tracker.log_params(run_id, {k: v for k, v in searched_values(best["config"], self.searched).items()
                                        if k not in logged})
            tracker.log_metrics(run_id, {self.metric: best[self.metric], M.ENV_STEPS: best[M.ENV_STEPS]}, step=0)
        tracker.set_status(run_id, "finished", None, "FINISHED")

    @staticmethod
    def interrupt(tracker: Tracker, run_id: str) -> None:
        tracker.set_status(run_id, "interrupted", None, "KILLED")
