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

import math
import os
import tempfile
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

    def log_metrics(self, run_id: str, values: dict[str, Any], step: int, wait: bool = True) -> Any:
        """One batch; with wait=False MLflow's async queue writes it and this returns its future."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in values.items() if _numeric(v)]
        return self.client.log_batch(run_id, metrics=batch, synchronous=wait)

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


class MlflowCallback(tune.Callback):
    """Logs every trial of one Tune run (a sweep, or a single `train` trial) to MLflow.

    `sweep_name` set: a parent run for the sweep with a child per trial; None: one run, no parent.
    `on_sweep_end(tracker, parent_run_id, trials, runs)` writes the sweep's summary artifacts.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | None, run_dir: str,
                 sweep_name: str | None, metric: str, mode: str, stop_reason: Any,
                 log_checkpoints: bool = True, sweep_params: dict[str, Any] | None = None,
                 on_sweep_end: Any = None):
        self.uri, self.experiment, self.artifact_root = uri, experiment, artifact_root
        self.run_dir, self.sweep_name = run_dir, sweep_name
        self.metric, self.mode, self.stop_reason = metric, mode, stop_reason
        self.log_checkpoints, self.sweep_params, self.on_sweep_end = log_checkpoints, sweep_params or {}, on_sweep_end
        self._reset()

    def _reset(self) -> None:
        self.logging_s = 0.0  # driver time spent logging iterations (it delays the trial's next step)
        self.logged_iterations = 0
        self._tracker: Tracker | None = None
        self.parent_run_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self._pending: dict[str, list[Any]] = {}  # trial id -> metric batches still being written
        self._last_step: dict[str, int] = {}
        self._best: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the run config
        state = self.__dict__.copy()
        for k in ("_tracker", "parent_run_id", "runs", "_pending", "_last_step", "_best", "logging_s",
                  "logged_iterations"):
            state.pop(k)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment, self.artifact_root)
        return self._tracker

    # -- runs ----------------------------------------------------------------------------------------

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

    def run_for(self, trial: Any, trials: list[Any] | None = None) -> str:
        tid = trial.trial_id
        if tid in self.runs:
            return self.runs[tid]
        t = self.tracker
        kind = "trial" if self.sweep_name else "train"
        run_id = t.find(**{TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid})
        if run_id is None and self.sweep_name and trials is not None:
            run_id = self._orphan(run_config_dict(trial.config), {x.trial_id for x in trials})
            if run_id is not None:  # the same Optuna trial, replayed from scratch under a new Tune id
                t.client.set_tag(run_id, "rlsweep.replaces_trial_id", t.client.get_run(run_id).data.tags[TAG_TRIAL])
                t.client.set_tag(run_id, TAG_TRIAL, tid)
        if run_id is not None:  # resumed: carry on where its history ends
            t.client.update_run(run_id, status="RUNNING")
            t.set_status(run_id, "running")
            self._last_step[tid] = t.last_step(run_id)
            best = t.client.get_run(run_id).data.tags.get(TAG_BEST_SCORE)
            if best is not None:
                self._best[tid] = float(best)
        else:
            config = run_config_dict(trial.config)
            tags = {TAG_KIND: kind, TAG_DIR: self.run_dir, TAG_TRIAL: tid, TAG_SEED: str(config["seed"]),
                    TAG_STATUS: "running"}
            if self.parent_run_id:
                tags[TAG_PARENT] = self.parent_run_id
            run_id = t.start(tid if self.sweep_name else config["name"], tags)
            t.log_params(run_id, flatten(config))
            t.log_yaml(run_id, config, "config.yaml")
            self._last_step[tid] = -1
        self.runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.run_for(trial, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t0 = time.perf_counter()
        run_id = self.run_for(trial)
        step = int(result.get(M.ENV_STEPS, 0))
        if step <= self._last_step[trial.trial_id]:
            return  # an iteration replayed from an older checkpoint: already logged
        # Tune schedules the trial's next step only once every callback has returned: the batch is
        # queued (MLflow's async logging) and waited for before the run's status changes.
        op = self.tracker.log_metrics(run_id, {k: v for k, v in result.items() if k in M.REPORTED}, step, wait=False)
        self._pending.setdefault(trial.trial_id, []).append(op)
        self._last_step[trial.trial_id] = step
        self.logging_s += time.perf_counter() - t0
        self.logged_iterations += 1

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        if not self.log_checkpoints:
            return
        score = (trial.last_result or {}).get(self.metric, math.nan)
        best = self._best.get(trial.trial_id)
        if not math.isnan(score) and (best is None or (score > best if self.mode == "max" else score < best)):
            self._best[trial.trial_id] = score
            run_id = self.run_for(trial)
            self.tracker.client.log_artifacts(run_id, checkpoint.path, "checkpoints/best")
            self.tracker.client.set_tag(run_id, TAG_BEST_SCORE, repr(score))

    def _flush(self, trial_id: str) -> None:
        for op in self._pending.pop(trial_id, []):
            if op is not None:
                op.wait()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_for(trial)
        self._flush(trial.trial_id)
        if self.log_checkpoints and trial.checkpoint is not None:
            self.tracker.client.log_artifacts(run_id, trial.checkpoint.path, "checkpoints/final")
        reason = self.stop_reason(trial.last_result or {})
        if reason:
            self.tracker.set_status(run_id, "finished", reason, "FINISHED")
        else:
            self.tracker.set_status(run_id, "stopped early", "stopped before its stop criteria, by the scheduler "
                                    "or the sweep's time budget", "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_for(trial)
        self._flush(trial.trial_id)
        err = trial.get_error() if hasattr(trial, "get_error") else None
        reason = str(err).strip().splitlines()[-1] if err and str(err).strip() else "see the trial's error file"
        self.tracker.set_status(run_id, "error", reason, "FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        for trial_id in list(self._pending):
            self._flush(trial_id)
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        for trial in unfinished:  # interrupted: `rlsweep resume` picks these runs up again
            if trial.trial_id in self.runs:
                self.tracker.set_status(self.runs[trial.trial_id], "interrupted", None, "KILLED")
        if self.parent_run_id is None:
            return
        if unfinished:
            self.tracker.set_status(self.parent_run_id, "interrupted", None, "KILLED")
            return
        if self.logged_iterations:
            self.tracker.log_metrics(self.parent_run_id, {
                "tracking_ms_per_iteration": 1000 * self.logging_s / self.logged_iterations,
                "tracking_s": self.logging_s}, step=0)
        if self.on_sweep_end is not None:  # trials finished before a resume are not in self.runs
            kind = {TAG_KIND: "trial", TAG_DIR: self.run_dir}
            runs = {t.trial_id: self.runs.get(t.trial_id) or self.tracker.find(**kind, **{TAG_TRIAL: t.trial_id})
                    for t in trials}
            self.on_sweep_end(self.tracker, self.parent_run_id, trials, runs)
        self.tracker.set_status(self.parent_run_id, "finished", None, "FINISHED")
