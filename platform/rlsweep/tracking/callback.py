"""The Tune callback that records every trial of a Tune run in MLflow, from the driver: the one writer.

The hooks run on Tune's driver loop and only queue work; one writer thread makes the MLflow calls
through a `Tracker`, in order. Metric rows go through the journal (`journal.py`) on disk first, so
rows waiting for a store that is down neither fill memory nor die with the driver. The callback keeps no state that matters across processes: after a
crash, `rlsweep resume` finds the parent by its sweep-directory tag, each child by its trial-id tag,
and the last logged env step from the child's own history, so nothing is logged twice and no run is
duplicated.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray import tune

from rlsweep import metrics as M
from rlsweep.config import ExperimentConfig, flatten
from rlsweep.ranking import better, trial_number
from rlsweep.tracking import provenance
from rlsweep.tracking.journal import Journal
from rlsweep.tracking.parents import SingleRun, SweepParent
from rlsweep.tracking.runs import (
    TAG_BEST_SCORE,
    TAG_CLONED_FROM,
    TAG_CLONED_RUN,
    TAG_CLONED_STEP,
    TAG_DIR,
    TAG_KIND,
    TAG_LINEAGE,
    TAG_PARENT,
    TAG_PLACEMENT,
    TAG_REPLACES,
    TAG_RESTORE_NOTE,
    TAG_RETRIES,
    TAG_RETRY_REASON,
    TAG_SEED,
    TAG_STATUS,
    TAG_TRIAL,
    numeric,
    run_config_dict,
    trial_error_line,
)
from rlsweep.tracking.series import Thinned
from rlsweep.tracking.status import Outcome, RunStatus, at_experiment_end, completed, failed
from rlsweep.tracking.store import Store
from rlsweep.tracking.tracker import Tracker
from rlsweep.tracking.writer import TrackingUnavailable, Writer

log = logging.getLogger("rlsweep.tracking")
FINAL = "final"  # a journal row's mark: a trial's closing values, at the step of its last result
# a journal row's mark: the first result of a PBT trial that continued from another trial's checkpoint,
# whose env steps go back (or jump ahead) to that checkpoint's: logged whatever the steps before it
CLONE = "clone"


def _timed(hook: Any) -> Any:
    """Adds the hook's own time to `hook_s` (how long tracking holds up Tune's loop); a store that stays
    unreachable ends the run as an interruption."""

    @functools.wraps(hook)
    def timed(self: MlflowCallback, *args: Any, **kwargs: Any) -> None:
        if self.tracking_lost is not None:
            return
        t0 = time.perf_counter()
        try:
            hook(self, *args, **kwargs)
        except TrackingUnavailable as e:
            # end the run as Ctrl-C would: Tune stops the trials and saves its state for `resume`
            self.tracking_lost = e
            log.error("%s; stopping, as for Ctrl-C", e)
            signal.raise_signal(signal.SIGINT)
        finally:
            self.hook_s += time.perf_counter() - t0

    return timed


class MlflowCallback(tune.Callback):
    """Logs every trial of one Tune run (a sweep, or a single `train` trial) to MLflow.

    Args:
        store: where the runs go.
        run_dir: the Tune experiment directory (each run's `rlsweep.dir` tag).
        cfg: the experiment; its `sweep.metric`/`mode` choose the best checkpoint, its `tracking`
            section whether checkpoints are uploaded and how often metrics are written.
        stop_reason: result -> why the trial stopped (None: stopped before its criteria).
        parent: what the trial runs hang under: a sweep's parent run, or `SingleRun` (`rlsweep train`).
        why_stopped: () -> why rlsweep itself stopped the run (e.g. `full_disk.StopOnFullDisk.why`), the
            reason of each run it interrupted; None when it did not.

    A checkpoint waits until every metric of the iterations before it is written, so a resume from
    that checkpoint leaves no gap.
    """

    def __init__(self, store: Store, run_dir: str, cfg: ExperimentConfig, stop_reason: Any,
                 parent: SweepParent | SingleRun, why_stopped: Callable[[], str | None] | None = None):
        self.store, self.run_dir, self.stop_reason, self.parent = store, run_dir, stop_reason, parent
        self.why_stopped = why_stopped
        self.metric, self.mode = cfg.sweep.metric, cfg.sweep.mode
        self.log_checkpoints = cfg.tracking.log_checkpoints
        # a trial's metric rows are written every flush_s, at its checkpoints and at its end (one
        # MLflow batch costs ~10 ms of driver CPU whatever its size: more often costs the trials CPU)
        self.flush_s = cfg.tracking.flush_s
        self.outage_s, self.barrier_s = cfg.tracking.outage_s, cfg.tracking.checkpoint_wait_s
        self._settings = (*self.__dict__, "_settings")  # what a pickle keeps; _reset makes the rest
        self._reset()

    def _reset(self) -> None:
        self.hook_s = 0.0  # driver time in the trial hooks
        self._resumed = False  # set up on a sweep whose parent run exists (rlsweep resume)
        self._warming = False
        self.logged_iterations = 0
        self._tracker: Tracker | None = None
        self._writer = Writer(self.outage_s)
        self.parent_run_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id (filled in by the writer)
        self._opened: set[str] = set()  # trials whose run the driver has asked for
        self._closed: set[str] = set()  # trials that completed or failed in this process
        self._started_at = time.monotonic()
        self.interrupted = False  # set at the end: some trial was cut short (Ctrl-C, SIGTERM, no store)
        self.tracking_lost: TrackingUnavailable | None = None
        self._journal = Journal(self.run_dir)  # every row, until MLflow has it
        self._flushed_at: dict[str, float] = {}  # trial id -> when its rows were last handed to the writer
        self._logged_step: dict[str, int] = {}  # trial id -> last env step in its run's history
        self._series: dict[str, Thinned] = {}  # trial id -> its series' repeats held back (`series.Thinned`)
        self._best: dict[str, float] = {}  # trial id -> the score of its run's checkpoints/best
        self._tags: dict[str, dict[str, str]] = {}  # trial id -> tags that ride with its next batch (writer thread)
        self._final_logged: set[str] = set()  # trials whose checkpoints/final is in MLflow
        self._hp: dict[str, set[str]] = {}  # trial id -> the `hp/<key>` metrics its run charts (`_changing`)
        self._retries: dict[str, int] = {}
        self._warned_wait = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the run config
        return {k: self.__dict__[k] for k in self._settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "parent" not in state:  # pickled by an older rlsweep: a sweep's parent, or a `train` run's tags
            sweep, tags = state.pop("sweep", None), state.pop("tags", None) or {}
            state["parent"] = sweep if sweep is not None else SingleRun(dict(tags))
            state["_settings"] = tuple(k for k in state["_settings"] if k not in ("sweep", "tags")) + ("parent",)
        state.setdefault("why_stopped", None)  # pickled before rlsweep stopped runs itself
        self.__dict__.update(state)
        self._reset()

    @property
    def tracker(self) -> Tracker:
        """The Tracker on the store, opened on first use."""
        if self._tracker is None:
            self._tracker = self.store.tracker()
        return self._tracker

    def open(self) -> None:
        """Open the store now (a new SQLite store creates its tables: seconds), e.g. while Ray starts.
        A failure here is raised again, with its reason, when Tune sets the callback up."""
        if self._tracker is None:
            try:
                self._tracker = self.store.tracker()
            except Exception:  # noqa: BLE001, S110
                pass

    @property
    def tracking_s(self) -> float:
        """Time MLflow cost the trials: the writer's calls, plus the hooks' time other than waiting for
        the writer (which would count the same calls twice)."""
        return self._writer.busy_s + self.hook_s - self._writer.waited_s

    # -- runs (called on the writer thread, except setup) ------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        """Tune starts (or resumes) the run: find or create the parent run."""
        self._started_at = time.monotonic()
        self.parent_run_id, self._resumed = self.parent.open(lambda: self.tracker)

    def _orphan(self, config: dict[str, Any], known: set[str]) -> str | None:
        """An unfinished run of this sweep whose trial the restored Tune experiment does not know
        (it started after Tune's last snapshot before a crash) and whose params are this config's."""
        params = {k: Tracker.param_value(v) for k, v in flatten(config).items()}
        for run in self.tracker.search(**{TAG_KIND: "trial", TAG_DIR: self.run_dir}):
            if run.tags.get(TAG_TRIAL) not in known and run.tags.get(TAG_STATUS) != RunStatus.FINISHED \
                    and run.params == params:
                return run.run_id
        return None

    def _open_run(self, tid: str, trial_config: dict[str, Any], known: set[str], number: str) -> None:
        """The trial's run: found again after a resume (or adopted from a crash), else created."""
        t = self.tracker
        kind = self.parent.kind
        config = run_config_dict(trial_config)
        run_id = None
        if self._resumed:  # a new sweep (or `train`) has no runs to find
            run_id = t.find(**{TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid})
            if run_id is None:
                run_id = self._orphan(config, known)
                if run_id is not None:  # the same Optuna trial, replayed from scratch under a new Tune id
                    t.set_tag(run_id, TAG_REPLACES, t.tags(run_id)[TAG_TRIAL])
                    t.set_tag(run_id, TAG_TRIAL, tid)
        if run_id is not None:  # resumed: carry on where its history ends
            t.reopen(run_id)
            self._logged_step[tid] = t.last_step(run_id)
            best = t.tags(run_id).get(TAG_BEST_SCORE)
            if best is not None:
                self._best[tid] = float(best)
        else:
            tags = {**provenance.tags(), TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid,
                    TAG_SEED: str(config["seed"]), TAG_STATUS: RunStatus.RUNNING.value}
            if self.parent_run_id:
                tags[TAG_PARENT] = self.parent_run_id
            name, more = self.parent.trial_run(config, number)
            tags.update(more)
            run_id = t.start(name, tags)
            t.log_params(run_id, flatten(config))
            t.log_yaml(run_id, config, "config.yaml")
            self._logged_step[tid] = -1
            self.parent.run_opened(tid, number, run_id)
        self.runs[tid] = run_id

    def _write_metrics(self, tid: str, ending: Outcome | None = None, held: bool = False) -> None:
        """Writes the trial's rows from the journal, repeats of its stepwise series held back
        (`series.Thinned`), with the tags that wait for them (`_tag_later`); `held`: what the series
        hold back is written too (at a checkpoint: MLflow then has every point before it); `ending`: the
        trial is over, that and its status. One MLflow call where the rows fit in one batch (the last
        chunk carries what the series held back, the tags and the status). The journal's position moves
        past rows only once MLflow has them: a failed write leaves them, and the series as they were,
        for the retry."""
        series = self._series.setdefault(tid, Thinned()).copy()
        tags = dict(self._tags.get(tid, {}))
        while True:
            rows, end = self._journal.read(tid)
            # after a resume, the iterations replayed from an older checkpoint are already logged
            new, last, iterations = [], self._logged_step[tid], 0
            for row in rows:
                final, clone = len(row) > 3 and row[3] == FINAL, len(row) > 3 and row[3] == CLONE
                if row[0] > last or (final and row[0] == last) or clone:
                    if clone:  # (its history starts over at the copied step)
                        new += series.end()
                    new += series.rows([tuple(row[:3])])
                    last = row[0]
                    iterations += not final
            done = not rows or not self._journal.unread(tid, end)
            if done:
                new += series.end() if ending is not None else series.flush() if held else []
            if done and ending is not None:
                self.tracker.set_status(self.runs[tid], ending, new, tags)
            elif new or tags:
                self.tracker.log_rows(self.runs[tid], new, tags)
            tags = self._sent(tid, tags)
            if rows:
                self._journal.advance(tid, end)
                self._logged_step[tid] = last
                self.logged_iterations += iterations
            self._series[tid] = series.copy()
            if done:
                return

    def _tag_later(self, tid: str, key: str, value: str) -> None:
        """A tag of the trial's run that rides with its next batch of rows (no MLflow call of its own):
        the best checkpoint's score, where the trial runs, a restore's note."""
        self._tags.setdefault(tid, {})[key] = value

    def _sent(self, tid: str, tags: dict[str, str]) -> dict[str, str]:
        """`tags` reached the trial's run (those not changed meanwhile wait no more); no tags left."""
        waiting = self._tags.get(tid, {})
        for key, value in tags.items():
            if waiting.get(key) == value:
                del waiting[key]
        return {}

    def _at_checkpoint(self, tid: str, checkpoint: Any, score: float | None) -> None:
        """A checkpoint: it becomes the run's best checkpoint where `score` beats the trial's best so far
        (None: checkpoints are not logged), then every point before it is written, the best's score tag
        with them. (An upload that went through is not repeated when the rows' write is retried.)"""
        best = self._best.get(tid)
        if score is not None and (best is None or better(score, best, self.mode)):
            with _on_this_machine(checkpoint) as path:
                if path is None:  # written late (the store was down) and Tune has since pruned it
                    log.warning("trial %s: checkpoint %s is gone before it reached MLflow; a later one will", tid,
                                checkpoint.path)
                else:
                    self.tracker.log_checkpoint(self.runs[tid], path, "checkpoints/best")
                    self._best[tid] = score
                    self._tag_later(tid, TAG_BEST_SCORE, repr(score))
        self._write_metrics(tid, held=True)

    def _close_run(self, tid: str, final_checkpoint: Any, outcome: Outcome) -> None:
        if final_checkpoint is not None and tid not in self._final_logged:
            with _on_this_machine(final_checkpoint) as path:
                if path is not None:
                    self.tracker.log_checkpoint(self.runs[tid], path, "checkpoints/final")
            self._final_logged.add(tid)
        self._write_metrics(tid, ending=outcome)
        self._journal.close(tid)

    # -- Tune hooks (driver thread): queue the work ------------------------------------------------

    def _ensure_run(self, trial: Any, trials: list[Any] | None = None) -> None:
        tid = trial.trial_id
        if tid not in self._opened:
            self._opened.add(tid)
            known = {x.trial_id for x in trials or []}
            number = trial_number(getattr(trial, "experiment_tag", None), tid)
            self._writer.submit(self._open_run, tid, dict(trial.config), known, number)

    @_timed
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """A trial starts: its run is asked for."""
        self._ensure_run(trial, trials)

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """A result: its numbers go to the journal, and to MLflow every `tracking.flush_s`."""
        self._ensure_run(trial, trials)
        tid = trial.trial_id
        step, ts = int(result.get(M.ENV_STEPS, 0)), int(time.time() * 1000)
        diverged = bool(result.get(M.NON_FINITE))
        # the iteration that met a NaN: its values go to MLflow as they are (NaN included); the trial's
        # next step fails it, for good (tuning.stopper.NoRetryAfterDivergence)
        changing = self._hp.get(tid)
        if changing is None:  # (a trial's config is read once, not at every result)
            changing = self._hp[tid] = self._changing(trial)
        values = {k: v for k, v in result.items() if M.is_reported(k) and (numeric(v) or diverged and isinstance(v, float))
                  and (not k.startswith(M.HP_PREFIX) or k in changing)}
        if not (self._cost_known(trial, result) or self.stop_reason(result)):  # (a stop criterion met: its last)
            # a stand-in every iteration would flatten every chart it is in
            values = {k: v for k, v in values.items() if not M.is_cost(k)}
        self._journal.append(tid, (step, ts, values, CLONE) if result.get(M.CLONED_FROM) else (step, ts, values))
        if result.get(M.RESTORE_NOTE):
            self._writer.submit(self._tag_later, tid, TAG_RESTORE_NOTE, str(result[M.RESTORE_NOTE]))
        if result.get(M.CLONED_FROM):
            source, lineage = str(result[M.CLONED_FROM]), str(result.get(M.LINEAGE, ""))
            self._writer.submit(self._note_clone, tid, source, lineage)
        if result.get(M.PLACEMENT):
            self._writer.submit(self._tag_later, tid, TAG_PLACEMENT, str(result[M.PLACEMENT]))
        now = time.monotonic()
        if now - self._flushed_at.get(tid, -math.inf) >= self.flush_s:
            self._flushed_at[tid] = now
            self._writer.submit(self._write_metrics, tid)

    def _changing(self, trial: Any) -> set[str]:
        """The `hp/<key>` metrics a trial's run charts: its config's schedules, and under PBT the keys
        the sweep perturbs."""
        config = trial.config
        keys = set(config.get("schedules") or {})
        if (config.get("sweep") or {}).get("scheduler") == "pbt":
            keys |= set(getattr(self.parent, "searched", ()))
        return {M.hyperparameter(k) for k in keys}

    def _note_clone(self, tid: str, source: str, lineage: str) -> None:
        """Tags a PBT trial's run with the trial it continued from, that trial's run and step, and its line."""
        last = lineage.rsplit(" ", 1)[-1]
        tags = {TAG_CLONED_FROM: source, TAG_LINEAGE: lineage[-5000:], TAG_CLONED_STEP: last.rpartition("@")[2]}
        if source in self.runs:
            tags[TAG_CLONED_RUN] = self.runs[source]
        self.tracker.set_tags(self.runs[tid], tags)

    @_timed
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        """A checkpoint: it becomes the run's best checkpoint where its score is the trial's best so
        far, and the rows before it are written (`_at_checkpoint`).
        """
        tid = trial.trial_id
        score = (trial.last_result or {}).get(self.metric, math.nan)
        self._flushed_at[tid] = time.monotonic()
        logged = self.log_checkpoints and not math.isnan(score)
        self._writer.submit(self._at_checkpoint, tid, checkpoint, score if logged else None)
        # Tune records this checkpoint as the trial's restore point: what came before it should be in
        # MLflow (and the checkpoint copied before Tune may delete it) before this returns; while the
        # store is down, training does not wait for it longer than checkpoint_wait_s
        wait = 0.0 if self._writer.failing_since is not None else self.barrier_s  # down: do not wait again
        if not self._writer.barrier(wait) and not self._warned_wait:
            self._warned_wait = True
            log.warning("MLflow is behind: checkpoints no longer wait for it (tracking.checkpoint_wait_s = %g)",
                        self.barrier_s)

    @staticmethod
    def _cost_known(trial: Any, result: dict[str, Any]) -> bool:
        """Whether the result's cost-aware metrics are measurements: every agent reached the target."""
        agents = ((trial.config or {}).get("sweep") or {}).get("seeds_per_trial") or 1
        return result.get(M.SEEDS_AT_TARGET, 0) >= agents

    def _final_cost(self, trial: Any) -> None:
        """A trial ended: the cost-aware metrics of its last result are its score, stand-ins included
        (a trial that never reached the target scores the budget); logged once, at its last step."""
        last = trial.last_result or {}
        if self._cost_known(trial, last) or self.stop_reason(last):
            return  # logged with that result already
        values = {k: v for k, v in last.items() if M.is_cost(k) and numeric(v)}
        if values:  # at the step already logged: marked, so that it is not taken for a replayed row
            self._journal.append(trial.trial_id, (int(last.get(M.ENV_STEPS, 0)), int(time.time() * 1000), values, FINAL))

    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A trial completed: its run is closed as finished or stopped early (`status.completed`)."""
        if not self._warming:
            self._warming = True
            threading.Thread(target=self.parent.warm_up, name="rlsweep-warm-up", daemon=True).start()
        final = trial.checkpoint if self.log_checkpoints and trial.checkpoint is not None else None
        self._ensure_run(trial, trials)
        self._final_cost(trial)
        self._closed.add(trial.trial_id)
        self._writer.submit(self._close_run, trial.trial_id, final, completed(self.stop_reason(trial.last_result or {})))

    @_timed
    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """Tune restarts a failed trial from its last checkpoint: the same run goes on (the iterations it
        replays are logged once); the run records how often and why."""
        self._ensure_run(trial, trials)
        tid = trial.trial_id
        self._retries[tid] = self._retries.get(tid, 0) + 1
        self._writer.submit(self._note_retry, tid, self._retries[tid], trial_error_line(trial))

    def _note_retry(self, tid: str, count: int, reason: str) -> None:
        self.tracker.set_tags(self.runs[tid], {TAG_RETRIES: str(count), TAG_RETRY_REASON: reason[:5000]})

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """A trial failed for good: its run is closed as an error with its one line."""
        self._ensure_run(trial, trials)
        self._final_cost(trial)
        self._closed.add(trial.trial_id)
        self._writer.submit(self._close_run, trial.trial_id, None, failed(trial_error_line(trial)))

    @property
    def started(self) -> bool:
        """Some trial started (its run was asked for)."""
        return bool(self._opened)

    def on_experiment_end(self, trials, **info) -> None:
        """The Tune run ends: every trial it cut short is marked (`status.at_experiment_end`), and
        the parent is closed: summarised, or interrupted.
        """
        self._journal.close()  # no more rows: every trial has stopped
        if self.tracking_lost is None:
            try:
                self._writer.barrier()
            except TrackingUnavailable as e:
                self.tracking_lost = e
        if self.tracking_lost is not None:  # nothing more can be written; `resume` continues the runs
            self.interrupted = True
            return
        elapsed = time.monotonic() - self._started_at
        interrupted = False
        for trial in trials:
            outcome = at_experiment_end(
                tune_status=trial.status, started_here=trial.trial_id in self._opened,
                ended_here=trial.trial_id in self._closed,
                has_result=bool((trial.last_result or {}).get(M.TRAINING_ITERATION)),
                time_budget_s=self.parent.time_budget_s, elapsed_s=elapsed,
                why=self.why_stopped() if self.why_stopped else None)
            if outcome is None:
                continue
            interrupted |= outcome.status is RunStatus.INTERRUPTED
            if trial.trial_id in self.runs:  # interrupted: `rlsweep resume` picks these runs up again
                self._write_metrics(trial.trial_id, ending=outcome)
        self.interrupted = interrupted
        tracking = {}
        if self.logged_iterations and not interrupted:
            tracking = {M.TRACKING_MS_PER_ITERATION: 1000 * self.tracking_s / self.logged_iterations,
                        M.TRACKING_BLOCKING_MS_PER_ITERATION: 1000 * self.hook_s / self.logged_iterations,
                        M.TRACKING_CPU_MS_PER_ITERATION: 1000 * self._writer.cpu_s / self.logged_iterations,
                        M.TRACKING_S: self.tracking_s}
        self.parent.end(self.tracker, self.parent_run_id, interrupted, trials, self.runs, tracking)


@contextlib.contextmanager
def _on_this_machine(checkpoint: Any) -> Iterator[str | None]:
    """A Tune checkpoint's folder on this machine: its own where Tune stores in a folder, a copy
    downloaded for the while where it stores in a bucket (`tuning.bucket`); None where it is gone."""
    import pyarrow.fs

    fs = getattr(checkpoint, "filesystem", None)
    if fs is None or isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield checkpoint.path if Path(checkpoint.path).is_dir() else None
        return
    with tempfile.TemporaryDirectory(prefix="rlsweep-checkpoint-") as scratch:
        local = Path(scratch) / "checkpoint"  # (made by the download: what it leaves of a failure is not used)
        try:
            checkpoint.to_directory(str(local))
        except Exception:  # noqa: BLE001 - gone (pruned meanwhile) or cut short: not logged
            local = None
        yield str(local) if local is not None and local.is_dir() and any(local.iterdir()) else None
