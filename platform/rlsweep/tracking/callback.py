"""The Tune callback that records every trial of a Tune run in MLflow, from the driver: the one writer.

The hooks run on Tune's driver loop and only queue work; one writer thread makes the MLflow calls
through a `Tracker`, in order. Metric rows go through the journal (`journal.py`) on disk first, so
rows waiting for a store that is down neither fill memory nor die with the driver. The callback keeps no state that matters across processes: after a
crash, `rlsweep resume` finds the parent by its sweep-directory tag, each child by its trial-id tag,
and the last logged env step from the child's own history, so nothing is logged twice and no run is
duplicated.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from rlsweep import metrics as M
from rlsweep.config import ExperimentConfig, flatten
from rlsweep.tracking.journal import Journal
from rlsweep.tracking.store import (
    TAG_BEST_SCORE,
    TAG_DESCRIPTION,
    TAG_DIR,
    TAG_KIND,
    TAG_PARENT,
    TAG_PLACEMENT,
    TAG_REPLACES,
    TAG_RESTORE_NOTE,
    TAG_RETRIES,
    TAG_RETRY_REASON,
    TAG_SEARCHED,
    TAG_SEED,
    TAG_STATUS,
    TAG_TRIAL,
    Store,
    Tracker,
    better,
    numeric,
    run_config_dict,
    searched_values,
    trial_error_line,
    trial_number,
    trial_run_name,
)
from rlsweep.tracking.sweep_parent import SweepParent

log = logging.getLogger("rlsweep.tracking")


class TrackingUnavailable(RuntimeError):
    """The MLflow store stayed unreachable for longer than `tracking.outage_s`."""


class _Writer:
    """One thread that makes the callback's MLflow calls, in the order they were submitted.

    Tune runs the next step of a trial only after every callback has returned, so MLflow calls made
    in the hooks would stall the trials (a run status change alone waits ~1 s for MLflow's own async
    queue to stop). Here the hooks only queue work. A call that fails is retried with backoff (the
    calls after it wait: order matters) while training goes on; only a store that stays unreachable
    for `outage_s` is an error, raised again in the driver at the next hook.
    """

    def __init__(self, outage_s: float = 300.0) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.outage_s = outage_s
        self.error: BaseException | None = None
        self.busy_s = 0.0  # time spent in MLflow calls
        self.cpu_s = 0.0  # CPU time of those calls
        self.waited_s = 0.0  # time the driver spent waiting in barrier()
        self.failing_since: float | None = None  # while the store is unreachable
        self._thread: threading.Thread | None = None

    def submit(self, fn: Any, *args: Any) -> None:
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rlsweep-mlflow", daemon=True)
            self._thread.start()
        self.queue.put((fn, args))

    def barrier(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written (at most `timeout` seconds); whether it was."""
        done = True
        if self._thread is not None:
            t0 = time.perf_counter()
            with self.queue.all_tasks_done:
                while self.queue.unfinished_tasks and self.error is None:
                    left = None if timeout is None else timeout - (time.perf_counter() - t0)
                    if left is not None and left <= 0:
                        done = False
                        break
                    self.queue.all_tasks_done.wait(1.0 if left is None else min(left, 1.0))
            self.waited_s += time.perf_counter() - t0
        self.check()
        return done

    def check(self) -> None:
        if self.error is not None:
            err = self.error
            if isinstance(err, TrackingUnavailable):
                raise err
            raise RuntimeError(f"MLflow tracking failed: {type(err).__name__}: {err}") from err

    def _loop(self) -> None:
        while True:
            fn, args = self.queue.get()
            try:
                if self.error is None:  # after giving up, drop the rest: the driver ends the run
                    self._call(fn, args)
            finally:
                self.queue.task_done()

    def _call(self, fn: Any, args: tuple) -> None:
        delay = 0.5
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                fn(*args)
                if self.failing_since is not None:
                    log.warning("MLflow store reachable again after %.0f s; the buffered metrics are written",
                                time.monotonic() - self.failing_since)
                    self.failing_since = None
                return
            except Exception as e:  # noqa: BLE001 - the store's errors are many; all are retried
                now = time.monotonic()
                if self.failing_since is None:
                    self.failing_since = now
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    log.warning("MLflow store unreachable (%s); training goes on, retrying for up to %.0f s",
                                first, self.outage_s)
                if now - self.failing_since >= self.outage_s:
                    self.error = TrackingUnavailable(
                        f"the MLflow store was unreachable for {now - self.failing_since:.0f} s "
                        f"(tracking.outage_s = {self.outage_s:g}): {type(e).__name__}: {e}")
                    self.error.__cause__ = e
                    return
            finally:
                self.busy_s += time.perf_counter() - t0
                self.cpu_s += time.thread_time() - c0
            time.sleep(delay)
            delay = min(2 * delay, 15.0)


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
        sweep: the sweep's parent run; None for `rlsweep train` (one run, no parent).
        tags: more tags for a `train` run.

    A checkpoint waits until every metric of the iterations before it is written, so a resume from
    that checkpoint leaves no gap.
    """

    def __init__(self, store: Store, run_dir: str, cfg: ExperimentConfig, stop_reason: Any,
                 sweep: SweepParent | None = None, tags: dict[str, str] | None = None):
        self.store, self.run_dir, self.stop_reason, self.sweep = store, run_dir, stop_reason, sweep
        self.tags = dict(tags or {})  # extra tags of a `train` run (where a restore came from)
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
        self._writer = _Writer(self.outage_s)
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
        self._best: dict[str, float] = {}
        self._retries: dict[str, int] = {}
        self._warned_wait = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the run config
        return {k: self.__dict__[k] for k in self._settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def tracker(self) -> Tracker:
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
        self._started_at = time.monotonic()
        if self.sweep is not None:
            self.parent_run_id, self._resumed = self.sweep.open(self.tracker)

    def _orphan(self, config: dict[str, Any], known: set[str]) -> str | None:
        """An unfinished run of this sweep whose trial the restored Tune experiment does not know
        (it started after Tune's last snapshot before a crash) and whose params are this config's."""
        params = {k: Tracker.param_value(v) for k, v in flatten(config).items()}
        for run in self.tracker.search(**{TAG_KIND: "trial", TAG_DIR: self.run_dir}):
            if run.tags.get(TAG_TRIAL) not in known and run.tags.get(TAG_STATUS) != "finished" \
                    and run.params == params:
                return run.run_id
        return None

    def _open_run(self, tid: str, trial_config: dict[str, Any], known: set[str], number: str) -> None:
        """The trial's run: found again after a resume (or adopted from a crash), else created."""
        t = self.tracker
        kind = "trial" if self.sweep else "train"
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
            tags = {TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid, TAG_SEED: str(config["seed"]),
                    TAG_STATUS: "running"}
            if self.parent_run_id:
                tags[TAG_PARENT] = self.parent_run_id
            if self.sweep is not None:
                name = trial_run_name(number, config, self.sweep.searched)
                values = ", ".join(f"{k}={v}" for k, v in searched_values(config, self.sweep.searched).items())
                tags[TAG_SEARCHED] = values
                tags[TAG_DESCRIPTION] = f"Trial {number} of sweep {self.sweep.name}: {values}"
            else:
                name = config["name"]
                tags.update(self.tags)
            run_id = t.start(name, tags)
            t.log_params(run_id, flatten(config))
            t.log_yaml(run_id, config, "config.yaml")
            self._logged_step[tid] = -1
        self.runs[tid] = run_id

    def _write_metrics(self, tid: str) -> None:
        """Writes the trial's rows from the journal; the journal's position moves past rows only once
        MLflow has them (a failed write leaves them for the retry)."""
        while True:
            rows, end = self._journal.read(tid)
            if not rows:
                return
            # after a resume, the iterations replayed from an older checkpoint are already logged
            new, last = [], self._logged_step[tid]
            for row in rows:
                if row[0] > last:
                    new.append(row)
                    last = row[0]
            if new:
                self.tracker.log_rows(self.runs[tid], new)
            self._journal.advance(tid, end)
            self._logged_step[tid] = last
            self.logged_iterations += len(new)

    def _log_best(self, tid: str, path: str, score: float) -> None:
        best = self._best.get(tid)
        if not Path(path).is_dir():  # written late (the store was down) and Tune has since pruned it
            log.warning("trial %s: checkpoint %s is gone before it reached MLflow; a later one will", tid, path)
            return
        if best is None or better(score, best, self.mode):
            self._best[tid] = score
            self.tracker.log_checkpoint(self.runs[tid], path, "checkpoints/best")
            self.tracker.set_tag(self.runs[tid], TAG_BEST_SCORE, repr(score))

    def _close_run(self, tid: str, final_checkpoint: str | None, status: str, reason: str | None,
                   mlflow_status: str) -> None:
        self._write_metrics(tid)
        if final_checkpoint is not None:
            self.tracker.log_checkpoint(self.runs[tid], final_checkpoint, "checkpoints/final")
        self.tracker.set_status(self.runs[tid], status, reason, mlflow_status)
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
        self._ensure_run(trial, trials)

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._ensure_run(trial, trials)
        tid = trial.trial_id
        step, ts = int(result.get(M.ENV_STEPS, 0)), int(time.time() * 1000)
        diverged = bool(result.get(M.NON_FINITE))
        if diverged:
            # the iteration that met a NaN: its values go to MLflow as they are (NaN included), and the
            # trial's next step fails it; a retry from the last checkpoint would only diverge again
            trial.max_failures = 0
        values = {k: v for k, v in result.items()
                  if k in M.REPORTED and (numeric(v) or diverged and isinstance(v, float))}
        self._journal.append(tid, (step, ts, values))
        if result.get(M.RESTORE_NOTE):
            self._writer.submit(lambda: self.tracker.set_tag(self.runs[tid], TAG_RESTORE_NOTE,
                                                             str(result[M.RESTORE_NOTE])))
        if result.get(M.PLACEMENT):
            self._writer.submit(lambda: self.tracker.set_tag(self.runs[tid], TAG_PLACEMENT,
                                                             str(result[M.PLACEMENT])))
        now = time.monotonic()
        if now - self._flushed_at.get(tid, -math.inf) >= self.flush_s:
            self._flushed_at[tid] = now
            self._writer.submit(self._write_metrics, tid)

    @_timed
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        tid = trial.trial_id
        score = (trial.last_result or {}).get(self.metric, math.nan)
        self._flushed_at[tid] = time.monotonic()
        self._writer.submit(self._write_metrics, tid)
        if self.log_checkpoints and not math.isnan(score):
            self._writer.submit(self._log_best, tid, checkpoint.path, score)
        # Tune records this checkpoint as the trial's restore point: what came before it should be in
        # MLflow (and the checkpoint copied before Tune may delete it) before this returns; while the
        # store is down, training does not wait for it longer than checkpoint_wait_s
        wait = 0.0 if self._writer.failing_since is not None else self.barrier_s  # down: do not wait again
        if not self._writer.barrier(wait) and not self._warned_wait:
            self._warned_wait = True
            log.warning("MLflow is behind: checkpoints no longer wait for it (tracking.checkpoint_wait_s = %g)",
                        self.barrier_s)

    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.sweep is not None and not self._warming:
            # the summary's imports (seconds), on a thread while the other trials run
            self._warming = True
            threading.Thread(target=self.sweep.warm_up, name="rlsweep-warm-up", daemon=True).start()
        final = trial.checkpoint.path if self.log_checkpoints and trial.checkpoint is not None else None
        reason = self.stop_reason(trial.last_result or {})
        if reason:
            status = ("finished", reason)
        else:
            status = ("stopped early", "stopped before its stop criteria, by the scheduler or the sweep's time budget")
        self._ensure_run(trial, trials)
        self._closed.add(trial.trial_id)
        self._writer.submit(self._close_run, trial.trial_id, final, *status, "FINISHED")

    @_timed
    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """Tune restarts a failed trial from its last checkpoint: the same run goes on (the iterations it
        replays are logged once); the run records how often and why."""
        self._ensure_run(trial, trials)
        tid = trial.trial_id
        self._retries[tid] = self._retries.get(tid, 0) + 1
        self._writer.submit(self._note_retry, tid, self._retries[tid], trial_error_line(trial))

    def _note_retry(self, tid: str, count: int, reason: str) -> None:
        self.tracker.set_tag(self.runs[tid], TAG_RETRIES, str(count))
        self.tracker.set_tag(self.runs[tid], TAG_RETRY_REASON, reason[:5000])

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ensure_run(trial, trials)
        self._closed.add(trial.trial_id)
        self._writer.submit(self._close_run, trial.trial_id, None, "error", trial_error_line(trial), "FAILED")

    @property
    def started(self) -> bool:
        """Some trial started (its run was asked for)."""
        return bool(self._opened)

    def on_experiment_end(self, trials, **info) -> None:
        self._journal.close()  # no more rows: every trial has stopped
        if self.tracking_lost is None:
            try:
                self._writer.barrier()
            except TrackingUnavailable as e:
                self.tracking_lost = e
        if self.tracking_lost is not None:  # nothing more can be written; `resume` continues the runs
            self.interrupted = True
            return
        # Tune marks the trials it stops on Ctrl-C TERMINATED, as if they had finished, but never
        # completes them: a trial that ran here and did not complete or fail was cut short, and so
        # was one that never started (it waited for resources); one that finished before a resume
        # has its last result
        cut = [t for t in trials if t.status not in ("TERMINATED", "ERROR")
               or (t.trial_id in self._opened and t.trial_id not in self._closed)
               or (t.status == "TERMINATED" and t.trial_id not in self._closed
                   and not (t.last_result or {}).get(M.TRAINING_ITERATION))]
        budget = self.sweep.time_budget_s if self.sweep is not None else None
        out_of_time = budget is not None and time.monotonic() - self._started_at >= budget
        for trial in cut:
            if trial.trial_id not in self.runs:
                continue
            self._write_metrics(trial.trial_id)
            if out_of_time and trial.status == "TERMINATED":
                self.tracker.set_status(self.runs[trial.trial_id], "stopped early",
                                        f"the sweep's time budget of {budget:g} s ended", "FINISHED")
            else:  # interrupted: `rlsweep resume` picks these runs up again
                self.tracker.set_status(self.runs[trial.trial_id], "interrupted", None, "KILLED")
        unfinished = [t for t in cut if not (out_of_time and t.status == "TERMINATED")]
        self.interrupted = bool(unfinished)
        if self.sweep is None or self.parent_run_id is None:
            return
        if unfinished:
            self.sweep.interrupt(self.tracker, self.parent_run_id)
            return
        if self.logged_iterations:
            self.tracker.log_metrics(self.parent_run_id, {
                "tracking_ms_per_iteration": 1000 * self.tracking_s / self.logged_iterations,
                "tracking_blocking_ms_per_iteration": 1000 * self.hook_s / self.logged_iterations,
                "tracking_cpu_ms_per_iteration": 1000 * self._writer.cpu_s / self.logged_iterations,
                "tracking_s": self.tracking_s}, step=0)
        self.sweep.finish(self.tracker, self.parent_run_id, trials, self.runs)
