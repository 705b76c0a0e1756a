"""MLflow tracking from the Tune driver: the one writer of every run.

Layout: MLflow experiment = the experiment's name; one parent run per sweep; one child run per trial
(tag `mlflow.parentRunId`), whose params are the trial's whole flattened config as used, whose
metrics are logged every iteration in one batch with step = env steps, and whose artifacts are the
resolved config and the best and final checkpoints. `rlsweep train` logs one run with no parent.

The tracker keeps no state that matters across processes: after a crash, `rlsweep resume` finds the
parent by its sweep-directory tag, each child by its trial-id tag, and the last logged env step from
the child's own history, so nothing is logged twice and no run is duplicated.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from rlsweep import metrics as M
from rlsweep.config import ConfigError, ExperimentConfig, flatten

TAG_KIND = "rlsweep.kind"  # "sweep" (parent), "trial" (child) or "train"
TAG_DIR = "rlsweep.dir"  # the Tune experiment directory the run belongs to
TAG_TRIAL = "rlsweep.trial_id"
TAG_SEED = "rlsweep.seed"
TAG_STATUS = "rlsweep.status"  # running | finished | stopped early | interrupted | error
TAG_REASON = "rlsweep.reason"
TAG_BEST_SCORE = "rlsweep.best_checkpoint_score"  # the metric when checkpoints/best was saved
TAG_PARENT = "mlflow.parentRunId"


def resolve_uri(cfg: ExperimentConfig) -> str:
    """The experiment's tracking URI, else $MLFLOW_TRACKING_URI, else a SQLite file in local_dir."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.tracking.local_dir).resolve() / 'mlflow.db'}"


def local_artifact_root(uri: str, cfg: ExperimentConfig) -> str | None:
    """For a SQLite store, the folder artifacts go to (MLflow would otherwise pick ./mlruns)."""
    if uri.startswith("sqlite:///"):
        return (Path(cfg.tracking.local_dir).resolve() / "mlartifacts").as_uri()
    return None


def check_store(uri: str) -> None:
    """Check the store before Ray starts; a ConfigError says why it cannot be used.

    SQLite files and HTTP servers are checked without importing MLflow (two seconds that the driver
    otherwise spends while Ray starts); other stores are opened with an MLflow client.
    """
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(f"tracking store {uri}: cannot be reached ({getattr(e, 'reason', e)})") from None
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            raise ConfigError(f"tracking store {uri}: folder {path.parent} does not exist")
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                raise ConfigError(f"tracking store {uri}: {path} is not readable and writable")
            with open(path, "rb") as f:
                header = f.read(16)
            if header and header != b"SQLite format 3\x00":
                raise ConfigError(f"tracking store {uri}: {path} is not an SQLite database")
        elif not os.access(path.parent, os.W_OK):
            raise ConfigError(f"tracking store {uri}: folder {path.parent} is not writable")
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # any failure to open the store is bad input, reported on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tracking store {uri}: cannot be opened ({first})") from None


def better(a: float, b: float, mode: str) -> bool:
    """Whether metric value a beats b under the sweep's mode ("max" or "min")."""
    return a > b if mode == "max" else a < b


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


class Tracker:
    """Writes runs through an MlflowClient; used by the Tune callback and by the report."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = f"{artifact_root}/{experiment}" if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            if exp.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment {experiment!r} is deleted; restore it or pick another name")
            self.experiment_id = exp.experiment_id

    def find(self, **tags: str) -> str | None:
        """The newest run whose tags match, or None."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1,
                                       order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def start(self, name: str, tags: dict[str, str]) -> str:
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items() if _numeric(v)])

    def last_step(self, run_id: str) -> int:
        history = self.client.get_metric_history(run_id, M.ENV_STEPS)
        return max((m.step for m in history), default=-1)

    def log_yaml(self, run_id: str, data: dict[str, Any], name: str, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            self.client.log_artifact(run_id, str(path), folder)

    def set_status(self, run_id: str, status: str, reason: str | None = None, mlflow_status: str | None = None) -> None:
        self.client.set_tag(run_id, TAG_STATUS, status)
        if reason:
            self.client.set_tag(run_id, TAG_REASON, reason[:5000])
        if mlflow_status:
            self.client.set_terminated(run_id, status=mlflow_status)


def run_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as a runnable experiment (validated, with every default filled in)."""
    return ExperimentConfig.model_validate(config).model_dump(mode="json")


# --------------------------------------------------------------------------------------------------
# The Tune callback


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

    `sweep_name` set: a parent run for the sweep with a child per trial; None: one run, no parent.
    `on_sweep_end(tracker, parent_run_id, trials, runs)` writes the sweep's summary artifacts;
    `warm_up()`, if given, runs on a thread of its own once the first trial ends (to prepare
    on_sweep_end while the other trials run, and not while the first ones start).
    The hooks hand their MLflow calls to one writer thread; a checkpoint waits until every metric of
    the iterations before it is written, so a resume from that checkpoint leaves no gap.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | None, run_dir: str,
                 sweep_name: str | None, metric: str, mode: str, stop_reason: Any,
                 log_checkpoints: bool = True, sweep_params: dict[str, Any] | None = None,
                 on_sweep_end: Any = None, warm_up: Any = None, flush_s: float = 2.0):
        self.uri, self.experiment, self.artifact_root = uri, experiment, artifact_root
        self.run_dir, self.sweep_name = run_dir, sweep_name
        self.metric, self.mode, self.stop_reason = metric, mode, stop_reason
        self.log_checkpoints, self.sweep_params, self.on_sweep_end = log_checkpoints, sweep_params or {}, on_sweep_end
        self.warm_up = warm_up
        # a trial's metric rows are written every flush_s, at its checkpoints and at its end (one
        # MLflow batch costs ~10 ms of driver CPU whatever its size: more often costs the trials CPU)
        self.flush_s = flush_s
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
        self._metrics: dict[str, list[tuple[int, list[Any]]]] = {}  # trial id -> (step, rows) not yet written
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
            self._tracker = Tracker(self.uri, self.experiment, self.artifact_root)
        return self._tracker

    def open(self) -> None:
        """Open the store now (a new SQLite store creates its tables: seconds), e.g. while Ray starts.
        A failure here is raised again, with its reason, when Tune sets the callback up."""
        if self._tracker is None:
            try:
                self._tracker = Tracker(self.uri, self.experiment, self.artifact_root)
            except Exception:  # noqa: BLE001, S110
                pass

    @property
    def tracking_s(self) -> float:
        """Time MLflow cost the trials: the writer's calls, plus the hooks' time other than waiting for
        the writer (which would count the same calls twice)."""
        return self._writer.busy_s + self.hook_s - self._writer.waited_s

    # -- runs (called on the writer thread, except setup) ------------------------------------------

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        if self.sweep_name is None:
            return
        t = self.tracker
        self.parent_run_id = t.find(**{TAG_KIND: "sweep", TAG_DIR: self.run_dir})
        if self.parent_run_id is None:
            self.parent_run_id = t.start(self.sweep_name, {TAG_KIND: "sweep", TAG_DIR: self.run_dir,
                                                           TAG_STATUS: "running"})
            t.log_params(self.parent_run_id, self.sweep_params)
        else:  # resumed
            self._resumed = True
            t.client.update_run(self.parent_run_id, status="RUNNING")
            t.set_status(self.parent_run_id, "running")

    def _orphan(self, config: dict[str, Any], known: set[str]) -> str | None:
        """An unfinished run of this sweep whose trial the restored Tune experiment does not know
        (it started after Tune's last snapshot before a crash) and whose params are this config's."""
        params = {k: str(v)[:6000] for k, v in flatten(config).items()}
        query = f"tags.`{TAG_KIND}` = 'trial' and tags.`{TAG_DIR}` = '{self.run_dir}'"
        for run in self.tracker.client.search_runs([self.tracker.experiment_id], filter_string=query, max_results=1000):
            tags = run.data.tags
            if tags.get(TAG_TRIAL) not in known and tags.get(TAG_STATUS) != "finished" and run.data.params == params:
                return run.info.run_id
        return None

    def _open_run(self, tid: str, trial_config: dict[str, Any], known: set[str]) -> None:
        """The trial's run: found again after a resume (or adopted from a crash), else created."""
        t = self.tracker
        kind = "trial" if self.sweep_name else "train"
        config = run_config_dict(trial_config)
        run_id = None
        if self._resumed:  # a new sweep (or `train`) has no runs to find
            run_id = t.find(**{TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid})
            if run_id is None:
                run_id = self._orphan(config, known)
                if run_id is not None:  # the same Optuna trial, replayed from scratch under a new Tune id
                    old = t.client.get_run(run_id).data.tags[TAG_TRIAL]
                    t.client.set_tag(run_id, "rlsweep.replaces_trial_id", old)
                    t.client.set_tag(run_id, TAG_TRIAL, tid)
        if run_id is not None:  # resumed: carry on where its history ends
            t.client.update_run(run_id, status="RUNNING")
            t.set_status(run_id, "running")
            self._logged_step[tid] = t.last_step(run_id)
            best = t.client.get_run(run_id).data.tags.get(TAG_BEST_SCORE)
            if best is not None:
                self._best[tid] = float(best)
        else:
            tags = {TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid, TAG_SEED: str(config["seed"]),
                    TAG_STATUS: "running"}
            if self.parent_run_id:
                tags[TAG_PARENT] = self.parent_run_id
            run_id = t.start(tid if self.sweep_name else config["name"], tags)
            t.log_params(run_id, flatten(config))
            t.log_yaml(run_id, config, "config.yaml")
            self._logged_step[tid] = -1
        self.runs[tid] = run_id

    def _write_metrics(self, tid: str) -> None:
        with self._lock:
            queued, self._metrics[tid] = self._metrics.get(tid, []), []
        rows = []
        for step, metrics in queued:
            # after a resume, the iterations replayed from an older checkpoint are already logged
            if step > self._logged_step[tid]:
                rows += metrics
                self._logged_step[tid] = step
                self.logged_iterations += 1
        for i in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker.client.log_batch(self.runs[tid], metrics=rows[i:i + 1000])

    def _log_best(self, tid: str, path: str, score: float) -> None:
        best = self._best.get(tid)
        if best is None or better(score, best, self.mode):
            self._best[tid] = score
            self.tracker.client.log_artifacts(self.runs[tid], path, "checkpoints/best")
            self.tracker.client.set_tag(self.runs[tid], TAG_BEST_SCORE, repr(score))

    def _close_run(self, tid: str, final_checkpoint: str | None, status: str, reason: str | None,
                   mlflow_status: str) -> None:
        self._write_metrics(tid)
        if final_checkpoint is not None:
            self.tracker.client.log_artifacts(self.runs[tid], final_checkpoint, "checkpoints/final")
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
        from mlflow.entities import Metric

        self._ensure_run(trial, trials)
        step, ts = int(result.get(M.ENV_STEPS, 0)), int(time.time() * 1000)
        rows = [Metric(k, float(v), ts, step) for k, v in result.items() if k in M.REPORTED and _numeric(v)]
        with self._lock:
            self._metrics.setdefault(trial.trial_id, []).append((step, rows))
        now = time.monotonic()
        if now - self._flushed_at.get(trial.trial_id, -math.inf) >= self.flush_s:
            self._flushed_at[trial.trial_id] = now
            self._writer.submit(self._write_metrics, trial.trial_id)

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
        if self.warm_up is not None and not self._warming:
            self._warming = True
            threading.Thread(target=self.warm_up, name="rlsweep-warm-up", daemon=True).start()
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
        if self.parent_run_id is None:
            return
        if unfinished:
            self.tracker.set_status(self.parent_run_id, "interrupted", None, "KILLED")
            return
        if self.logged_iterations:
            self.tracker.log_metrics(self.parent_run_id, {
                "tracking_ms_per_iteration": 1000 * self.tracking_s / self.logged_iterations,
                "tracking_blocking_ms_per_iteration": 1000 * self.hook_s / self.logged_iterations,
                "tracking_cpu_ms_per_iteration": 1000 * self._writer.cpu_s / self.logged_iterations,
                "tracking_s": self.tracking_s}, step=0)
        if self.on_sweep_end is not None:  # trials finished before a resume are not in self.runs
            kind = {TAG_KIND: "trial", TAG_DIR: self.run_dir}
            runs = {t.trial_id: self.runs.get(t.trial_id) or self.tracker.find(**kind, **{TAG_TRIAL: t.trial_id})
                    for t in trials}
            self.on_sweep_end(self.tracker, self.parent_run_id, trials, runs)
        self.tracker.set_status(self.parent_run_id, "finished", None, "FINISHED")
