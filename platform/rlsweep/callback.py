"""The Tune callback that records every trial of a Tune run in MLflow, from the driver: the one writer.

The hooks run on Tune's driver loop and only queue work; one writer thread makes the MLflow calls
through a `Tracker`, in order. The callback keeps no state that matters across processes: after a
crash, `rlsweep resume` finds the parent by its sweep-directory tag, each child by its trial-id tag,
and the last logged env step from the child's own history, so nothing is logged twice and no run is
duplicated.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from typing import Any

from ray import tune

from rlsweep import metrics as M
from rlsweep.config import ExperimentConfig, flatten
from rlsweep.parent_run import SweepParent
from rlsweep.tracking import (
    TAG_BEST_SCORE,
    TAG_DIR,
    TAG_KIND,
    TAG_PARENT,
    TAG_REPLACES,
    TAG_RESTORE_NOTE,
    TAG_SEED,
    TAG_STATUS,
    TAG_TRIAL,
    Store,
    Tracker,
    better,
    run_config_dict,
)


class _Writer:
    """One thread that makes the callback's MLflow calls, in the order they were submitted.

    Tune runs the next step of a trial only after every callback has returned, so MLflow calls made
    in the hooks would stall the trials (a run status change alone waits ~1 s for MLflow's own async
    queue to stop). Here the hooks only queue work. The first error is raised again in the driver at
    the next hook, so tracking never fails silently.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.error: BaseException | None = None
        self.busy_s = 0.0  # time spent in MLflow calls
        self.cpu_s = 0.0  # CPU time of those calls
        self.waited_s = 0.0  # time the driver spent waiting in barrier()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Any, *args: Any) -> None:
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rlsweep-mlflow", daemon=True)
            self._thread.start()
        self.queue.put((fn, args))

    def barrier(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self.queue.join()
            self.waited_s += time.perf_counter() - t0
        self.check()

    def check(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise RuntimeError(f"MLflow tracking failed: {type(err).__name__}: {err}") from err

    def _loop(self) -> None:
        while True:
            fn, args = self.queue.get()
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                if self.error is None:  # after a failure, drop the rest: the driver stops the run
                    fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the driver thread
                self.error = e
            finally:
                self.busy_s += time.perf_counter() - t0
                self.cpu_s += time.thread_time() - c0
                self.queue.task_done()


def _timed(hook: Any) -> Any:
    """Adds the hook's own time to `hook_s`: how long tracking holds up Tune's loop."""

    @functools.wraps(hook)
    def timed(self: MlflowCallback, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            hook(self, *args, **kwargs)
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

    A checkpoint waits until every metric of the iterations before it is written, so a resume from
    that checkpoint leaves no gap.
    """

    def __init__(self, store: Store, run_dir: str, cfg: ExperimentConfig, stop_reason: Any,
                 sweep: SweepParent | None = None):
        self.store, self.run_dir, self.stop_reason, self.sweep = store, run_dir, stop_reason, sweep
        self.metric, self.mode = cfg.sweep.metric, cfg.sweep.mode
        self.log_checkpoints = cfg.tracking.log_checkpoints
        # a trial's metric rows are written every flush_s, at its checkpoints and at its end (one
        # MLflow batch costs ~10 ms of driver CPU whatever its size: more often costs the trials CPU)
        self.flush_s = cfg.tracking.flush_s
        self._settings = (*self.__dict__, "_settings")  # what a pickle keeps; _reset makes the rest
        self._reset()

    def _reset(self) -> None:
        self.hook_s = 0.0  # driver time in the trial hooks
        self._resumed = False  # set up on a sweep whose parent run exists (rlsweep resume)
        self._warming = False
        self.logged_iterations = 0
        self._tracker: Tracker | None = None
        self._writer = _Writer()
        self._lock = threading.Lock()
        self.parent_run_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id (filled in by the writer)
        self._opened: set[str] = set()  # trials whose run the driver has asked for
        self._rows: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}  # trial id -> rows not yet written
        self._flushed_at: dict[str, float] = {}  # trial id -> when its rows were last handed to the writer
        self._logged_step: dict[str, int] = {}  # trial id -> last env step in its run's history
        self._best: dict[str, float] = {}

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

    def _open_run(self, tid: str, trial_config: dict[str, Any], known: set[str]) -> None:
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
            run_id = t.start(tid if self.sweep else config["name"], tags)
            t.log_params(run_id, flatten(config))
            t.log_yaml(run_id, config, "config.yaml")
            self._logged_step[tid] = -1
        self.runs[tid] = run_id

    def _write_metrics(self, tid: str) -> None:
        with self._lock:
            queued, self._rows[tid] = self._rows.get(tid, []), []
        rows = []
        for row in queued:
            # after a resume, the iterations replayed from an older checkpoint are already logged
            if row[0] > self._logged_step[tid]:
                rows.append(row)
                self._logged_step[tid] = row[0]
                self.logged_iterations += 1
        self.tracker.log_rows(self.runs[tid], rows)

    def _log_best(self, tid: str, path: str, score: float) -> None:
        best = self._best.get(tid)
        if best is None or better(score, best, self.mode):
            self._best[tid] = score
            self.tracker.log_artifacts(self.runs[tid], path, "checkpoints/best")
            self.tracker.set_tag(self.runs[tid], TAG_BEST_SCORE, repr(score))

    def _close_run(self, tid: str, final_checkpoint: str | None, status: str, reason: str | None,
                   mlflow_status: str) -> None:
        self._write_metrics(tid)
        if final_checkpoint is not None:
            self.tracker.log_artifacts(self.runs[tid], final_checkpoint, "checkpoints/final")
        self.tracker.set_status(self.runs[tid], status, reason, mlflow_status)

    # -- Tune hooks (driver thread): queue the work ------------------------------------------------

    def _ensure_run(self, trial: Any, trials: list[Any] | None = None) -> None:
        tid = trial.trial_id
        if tid not in self._opened:
            self._opened.add(tid)
            known = {x.trial_id for x in trials or []}
            self._writer.submit(self._open_run, tid, dict(trial.config), known)

    @_timed
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._ensure_run(trial, trials)

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._ensure_run(trial, trials)
        tid = trial.trial_id
        step, ts = int(result.get(M.ENV_STEPS, 0)), int(time.time() * 1000)
        with self._lock:
            self._rows.setdefault(tid, []).append((step, ts, {k: v for k, v in result.items() if k in M.REPORTED}))
        if result.get(M.RESTORE_NOTE):
            self._writer.submit(lambda: self.tracker.set_tag(self.runs[tid], TAG_RESTORE_NOTE,
                                                             str(result[M.RESTORE_NOTE])))
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
        # Tune records this checkpoint as the trial's restore point: what came before it must be in
        # MLflow (and the checkpoint copied before Tune may delete it) before this returns
        self._writer.barrier()

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
        self._writer.submit(self._close_run, trial.trial_id, final, *status, "FINISHED")

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        err = trial.get_error() if hasattr(trial, "get_error") else None
        reason = str(err).strip().splitlines()[-1] if err and str(err).strip() else "see the trial's error file"
        self._ensure_run(trial, trials)
        self._writer.submit(self._close_run, trial.trial_id, None, "error", reason, "FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        self._writer.barrier()
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        for trial in unfinished:  # interrupted: `rlsweep resume` picks these runs up again
            if trial.trial_id in self.runs:
                self._write_metrics(trial.trial_id)
                self.tracker.set_status(self.runs[trial.trial_id], "interrupted", None, "KILLED")
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
