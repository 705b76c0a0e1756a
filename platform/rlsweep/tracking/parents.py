"""What a Tune run's trial runs hang under in MLflow: a sweep's parent run, or nothing.

The Tune callback (`callback.py`) logs trials the same way for both; what differs is here, behind one
interface: `SweepParent` finds or creates the sweep's parent run, names each trial run after its
searched values and writes the sweep's summary at the end (`report.py`); `SingleRun` is `rlsweep
train`'s one run, with no parent. Both are plain data: Tune pickles them with the callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlsweep.config import first_line
from rlsweep.tracking import provenance, report
from rlsweep.tracking.runs import (
    TAG_CONFIRMS,
    TAG_DESCRIPTION,
    TAG_DIR,
    TAG_KIND,
    TAG_PARENT,
    TAG_PHASE,
    TAG_RUN_COLOR,
    TAG_SEARCHED,
    TAG_STATUS,
    TAG_TRIAL,
    TAG_WINNER,
    WINNER_MARK,
    run_color,
    searched_values,
    trial_run_name,
)
from rlsweep.tracking.status import Outcome, RunStatus
from rlsweep.tracking.tracker import Tracker

log = logging.getLogger(__name__)
_STORAGES: dict[str, Any] = {}  # Optuna storage URL -> its storage, opened once per process (not pickled)


@dataclass
class SingleRun:
    """`rlsweep train`: one run named after the experiment, with no parent.

    Args:
        tags: more tags for the run (where a `--restore` came from).
    """

    tags: dict[str, str] = field(default_factory=dict)
    kind: str = "train"  # the runs' `rlsweep.kind` tag
    time_budget_s: float | None = None

    def open(self, tracker: Callable[[], Tracker]) -> tuple[str | None, bool]:
        """No parent run, and nothing to resume (the store is opened with the run, not before)."""
        return None, False

    def trial_run(self, config: dict[str, Any], number: str) -> tuple[str, dict[str, str]]:
        """The run's name and its extra tags."""
        return config["name"], dict(self.tags)

    def run_opened(self, trial_id: str, number: str, run_id: str) -> None:
        """A trial's run was created (nothing to tell: a single run has no study)."""

    def warm_up(self) -> None:
        """Nothing to prepare: there is no summary."""

    def end(self, tracker: Tracker, run_id: str | None, interrupted: bool, trials: list[Any],
            runs: dict[str, str], tracking: dict[str, float]) -> None:
        """Nothing to close."""


@dataclass
class SweepParent:
    """A sweep's parent run: found again on resume, else created; summarised when the sweep ends.

    Args:
        name: the sweep's name, also the parent run's name.
        run_dir: the sweep directory (the runs' `rlsweep.dir` tag).
        metric: the metric the sweep ranks trials by; `mode` says which way ("max" or "min").
        searched: the search space's parameter names, in its order.
        params: the parent run's params.
        study: Optuna (storage URL, study name), for parameter importance.
        time_budget_s: the sweep's time budget (trials it cuts short stopped early).
        confirm: a confirmation round follows the search (`sweep.confirm`): the search's end leaves
            the parent running, marked (`rlsweep.phase`) for it.
        confirms: in the confirmation round, the search trial ids (and numbers) its trials retrain, in
            its trials' order; empty in the search.
        target: the experiment's stop.target_return, drawn on the learning curves.
    """

    name: str
    run_dir: str
    metric: str
    mode: str
    searched: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    study: tuple[str, str] | None = None
    time_budget_s: float | None = None
    kind: str = "trial"
    confirm: bool = False
    confirms: tuple[tuple[str, str], ...] = ()  # (a class default: parents pickled before rounds have none)
    target: float | None = None  # stop.target_return, drawn on the learning curves (a class default likewise)
    video: bool = True  # tracking.log_video: winner.gif on the parent at the end
    model_name: str | None = None  # tracking.register_model: the registered model the winner becomes a version of

    @property
    def confirming(self) -> bool:
        """This is the confirmation round's parent (its trials retrain the search's best)."""
        return bool(self.confirms)

    def open(self, tracker: Callable[[], Tracker]) -> tuple[str | None, bool]:
        """The parent run's id, and whether it already existed (a resumed sweep).

        Args:
            tracker: opens (or returns) the Tracker on the store.
        """
        tracker = tracker()
        run_id = tracker.find(**{TAG_KIND: "sweep", TAG_DIR: self.run_dir})
        if run_id is not None:
            tracker.reopen(run_id)
            return run_id, True
        run_id = tracker.start(self.name, {**provenance.tags(), TAG_KIND: "sweep", TAG_DIR: self.run_dir,
                                           TAG_STATUS: RunStatus.RUNNING.value,
                                           TAG_DESCRIPTION: f"Sweep {self.name} over {', '.join(self.searched)}: "
                                           f"{self.mode} {self.metric}. Once it ends, this says which trial won and by how much."})
        tracker.log_params(run_id, self.params)
        return run_id, False

    def trial_run(self, config: dict[str, Any], number: str) -> tuple[str, dict[str, str]]:
        """A trial run's name (`003 lr=0.000312 ...`, a confirmation's `confirm 003 lr=...` after the
        search trial it retrains) and its tags: searched values, description (and what it confirms)."""
        values = ", ".join(f"{k}={v}" for k, v in searched_values(config, self.searched).items())
        tags = {TAG_SEARCHED: values, TAG_DESCRIPTION: f"Trial {number} of sweep {self.name}: {values}",
                TAG_RUN_COLOR: run_color(number)}
        if not self.confirming:
            return trial_run_name(number, config, self.searched), tags
        i = int(number) - 1 if number.isdigit() else -1
        trial_id, search_number = self.confirms[i] if 0 <= i < len(self.confirms) else ("?", "?")
        seeds = config["sweep"]["seeds_per_trial"]
        tags.update({TAG_PHASE: "confirm", TAG_CONFIRMS: trial_id,
                     TAG_DESCRIPTION: f"Confirmation of trial {search_number} of sweep {self.name} on {seeds} "
                                      f"fresh seeds (from {config['seed']}): {values}"})
        return "confirm " + trial_run_name(search_number, config, self.searched), tags

    def run_opened(self, trial_id: str, number: str, run_id: str) -> None:
        """A trial's run was created: its Optuna trial gets the same name (user attributes `rlsweep_trial`,
        the run's number, and `mlflow_run_id`), so that optuna-dashboard and MLflow name it alike. Best
        effort, on the writer thread: a trial Optuna has already closed keeps only its `tune_trial_id`."""
        if self.study is None or self.confirming:  # the confirmation round asks Optuna nothing
            return
        import optuna

        try:
            from rlsweep.compat import optuna_set_user_attrs, optuna_trial_id
            from rlsweep.tuning.bucket import relocate
            from rlsweep.tuning.searcher import SUGGESTED

            url = relocate(self.study[0])  # (a sweep resumed on another machine: its study there)
            storage = _STORAGES.get(url) or _STORAGES.setdefault(url, optuna.storages.RDBStorage(url))
            names = {"rlsweep_trial": number, "mlflow_run_id": run_id}
            if trial_id in SUGGESTED:  # (suggested in this process: no search; a closed trial refuses)
                optuna_set_user_attrs(storage, SUGGESTED[trial_id], names)
                return
            study_id = storage.get_study_id_from_name(self.study[1])
            for frozen in storage.get_all_trials(study_id, deepcopy=False,
                                                 states=(optuna.trial.TrialState.RUNNING,)):
                if frozen.user_attrs.get("tune_trial_id") == trial_id:
                    optuna_set_user_attrs(storage, optuna_trial_id(frozen), names)
                    return
        except Exception as e:  # the study is the searcher's; its names are a courtesy
            log.debug("could not name Optuna's trial for %s: %s", trial_id, e)

    @staticmethod
    def warm_up() -> None:
        """The summary's imports (seconds), on a thread while the other trials run."""
        report.warm_up()

    def end(self, tracker: Tracker, run_id: str | None, interrupted: bool, trials: list[Any],
            runs: dict[str, str], tracking: dict[str, float]) -> None:
        """Marks the parent interrupted, or writes the sweep's summary (results table, best config,
        plots; its best trial's values as the parent's own) and marks it finished.

        Args:
            trials: Tune's trials (their ids).
            runs: trial id -> run id, for the trials run in this process; the others are looked up by tag.
            tracking: what tracking cost, logged on the parent.
        """
        if run_id is None:
            return
        if interrupted:
            tracker.set_status(run_id, Outcome(RunStatus.INTERRUPTED))
            return
        kind = {TAG_KIND: "trial", TAG_DIR: self.run_dir}
        if self.confirming:  # the summary's rows are the search's trials (with their confirmations)
            all_runs = {r.tags.get(TAG_TRIAL): r.run_id for r in tracker.search(**kind)}
        else:
            all_runs = {t.trial_id: runs.get(t.trial_id) or tracker.find(**kind, **{TAG_TRIAL: t.trial_id})
                        for t in trials}
        _refresh(self.run_dir)
        best = report.sweep_summary(tracker, run_id, self.run_dir, all_runs, metric=self.metric, mode=self.mode,
                                    params=self.searched, name=self.name, study=self.study, target=self.target)
        if tracking:  # after the answer (best_*), so that the run page lists it first; 3 significant digits
            tracker.log_metrics(run_id, {k: float(f"{v:.3g}") for k, v in tracking.items()}, step=0)
        if self.confirm and not self.confirming and best is not None:  # the confirmation round follows
            tracker.set_tag(run_id, TAG_PHASE, "confirm")
            return
        if best is not None:  # the parent's params are its winner's (its metrics: best_*, see report.py)
            logged = tracker.params(run_id)  # params are write-once: a summary written again keeps the first
            tracker.log_params(run_id, {k: v for k, v in searched_values(best["config"], self.searched).items()
                                        if k not in logged})
        if self.confirming:
            report.confirmation_summary(tracker, run_id, self.run_dir, metric=self.metric, mode=self.mode)
        if best is not None and best.get("mlflow_run_id"):
            mark_winner(tracker, best["mlflow_run_id"], tracker.search(**{TAG_PARENT: run_id, TAG_KIND: "trial"}))
        checkpoint = best.get("checkpoint") if best is not None else None
        # the winner filmed in a child process while its model is built and registered here
        with report.winner_video(tracker, run_id, checkpoint if self.video else None):
            if self.model_name and checkpoint:
                register_winner(tracker, run_id, checkpoint, self.model_name)
        tracker.set_status(run_id, Outcome(RunStatus.FINISHED))


def register_winner(tracker: Tracker, run_id: str, checkpoint: str, name: str) -> None:
    """The winner as an MLflow Model on the parent, registered as `name`@champion (`tracking.model`); a
    store without a model registry, or any failure of it, is a note (the tag and a warning), never the
    sweep's failure."""
    from rlsweep.tracking.model import TAG_MODEL, log_and_register

    try:
        said = tracker.tags(run_id).get(TAG_MODEL, "")
        if said and not said.startswith("not registered"):  # this summary ran before (killed after it): once
            return
        log_and_register(tracker, run_id, checkpoint, name)
    except Exception as e:  # noqa: BLE001 - the model is a courtesy on top of the finished sweep
        first = first_line(e)
        log.warning("the winner was not registered as model %s: %s", name, first)
        try:
            tracker.set_tag(run_id, TAG_MODEL, f"not registered: {first}")
        except Exception:  # noqa: BLE001 - the store itself is gone: the warning said it
            pass


def mark_winner(tracker: Tracker, winner: str, trials: list[Any]) -> None:
    """Marks the sweep's winning trial run where people look (its name ends in "(winner)", its
    `rlsweep.winner` tag is "true"), and unmarks a run that an earlier summary marked (a search winner
    that the confirmation round overturned)."""
    for run in trials:
        if run.run_id != winner and run.tags.get(TAG_WINNER):
            tracker.delete_tag(run.run_id, TAG_WINNER)
            tracker.rename(run.run_id, run.name.removesuffix(WINNER_MARK))
    mine = next((r for r in trials if r.run_id == winner), None)
    if mine is not None and not mine.tags.get(TAG_WINNER):
        tracker.set_tag(winner, TAG_WINNER, "true")
        tracker.rename(winner, mine.name.removesuffix(WINNER_MARK) + WINNER_MARK)


def _refresh(run_dir: str) -> None:
    """A sweep kept in a bucket: what Tune stored there, before its rows are read (`tuning.bucket`)."""
    from rlsweep.config import ConfigError
    from rlsweep.tuning.bucket import folder_of, refresh

    try:
        refresh(folder_of(run_dir))
    except (ConfigError, OSError) as e:
        log.warning("%s; the summary ranks what this machine holds of the sweep", e)
