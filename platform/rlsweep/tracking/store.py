"""MLflow tracking: where the store is, whether it can be used, and the `Tracker` that writes runs.

No Ray here: the Tune callback that drives the tracker lives in `callback.py`, the sweep's parent run
in `parent_run.py`. Every MLflow call rlsweep makes goes through a `Tracker` method.

Layout: MLflow experiment = the experiment's name (or `tracking.experiment`); one parent run per
sweep; one child run per trial (tag `mlflow.parentRunId`), whose params are the trial's whole
flattened config as used, whose metrics are logged every iteration with step = env steps, and whose
artifacts are the resolved config and the best and final checkpoints. `rlsweep train` logs one run
with no parent.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlsweep import metrics as M
from rlsweep.config import ConfigError, ExperimentConfig, TrackingConfig

TAG_KIND = "rlsweep.kind"  # "sweep" (parent), "trial" (child) or "train"
TAG_DIR = "rlsweep.dir"  # the Tune experiment directory the run belongs to
TAG_TRIAL = "rlsweep.trial_id"
TAG_SEED = "rlsweep.seed"
TAG_STATUS = "rlsweep.status"  # running | finished | stopped early | interrupted | error
TAG_REASON = "rlsweep.reason"
TAG_BEST_SCORE = "rlsweep.best_checkpoint_score"  # the metric when checkpoints/best was saved
TAG_REPLACES = "rlsweep.replaces_trial_id"  # a run adopted after a crash: the trial id it had before
TAG_PLACEMENT = "rlsweep.placement"  # the Ray nodes of a trial's processes (metrics.PLACEMENT)
TAG_RESTORE_NOTE = "rlsweep.restore_note"  # why a restored run could not continue exactly
TAG_RETRIES = "rlsweep.retries"  # times Tune restarted the trial after a failure
TAG_RETRY_REASON = "rlsweep.retry_reason"  # the failure before the latest restart
TAG_BEST_TRIAL = "rlsweep.best_trial_id"  # on the parent
TAG_BEST_RUN = "rlsweep.best_run_id"  # on the parent
TAG_SEARCHED = "rlsweep.searched"  # on a trial: its searched values, `key=value, ...`
TAG_RESTORED_FROM = "rlsweep.restored_from"  # a `train --restore` run: the checkpoint it continued
TAG_RESTORED_RUN = "rlsweep.restored_from_run"  # ... the MLflow run that checkpoint came from, if any
TAG_RESTORED_STEP = "rlsweep.restored_from_env_steps"  # ... and the env steps it held
TAG_PARENT = "mlflow.parentRunId"
TAG_DESCRIPTION = "mlflow.note.content"  # the run's description in the MLflow UI

# short names for searched keys in run names (the last part of the key otherwise)
_SHORT = {"train_batch_size": "batch", "minibatch_size": "minibatch", "num_epochs": "epochs",
          "hidden_sizes": "hidden", "gae_lambda": "lambda", "num_envs_per_worker": "envs"}


# -- where the store is -------------------------------------------------------------------------------


def resolve_uri(tracking: TrackingConfig) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else a SQLite file in `tracking.local_dir`."""
    if tracking.uri:
        return tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(tracking.local_dir).resolve() / 'mlflow.db'}"


def local_artifact_root(uri: str, tracking: TrackingConfig) -> str | None:
    """For a SQLite store, the folder artifacts go to (MLflow would otherwise pick ./mlruns)."""
    if uri.startswith("sqlite:///"):
        return (Path(tracking.local_dir).resolve() / "mlartifacts").as_uri()
    return None


def experiment_name(cfg: ExperimentConfig) -> str:
    """The MLflow experiment an experiment's runs go to."""
    return cfg.tracking.experiment or cfg.name


@dataclass(frozen=True)
class Store:
    """An MLflow store and the experiment in it that runs go to."""

    uri: str
    experiment: str
    artifact_root: str | None = None

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> Store:
        uri = resolve_uri(cfg.tracking)
        return cls(uri, experiment_name(cfg), local_artifact_root(uri, cfg.tracking))

    def tracker(self) -> Tracker:
        """A Tracker on this store. A new SQLite store gets its tables here: one process at a time (two
        sweeps starting together on a fresh store would race on MLflow's migrations)."""
        if not self.uri.startswith("sqlite:///"):
            return Tracker(self.uri, self.experiment, self.artifact_root)
        import fcntl

        with open(self.uri.removeprefix("sqlite:///") + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return Tracker(self.uri, self.experiment, self.artifact_root)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


_USERINFO = re.compile(r"(://[^/\s:@]*):[^@\s/]*@")

# MLflow reads HTTP basic-auth credentials from these (and a bearer token from the third)
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"


def take_credentials(uri: str | None) -> str | None:
    """`uri` without its `user:password@` part, which moves into MLflow's credential variables of this
    process. The URI that rlsweep then keeps (in configs, params, files, Tune's state) holds no secret."""
    if not uri or "://" not in uri:
        return uri
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    os.environ[USERNAME_ENV] = unquote(parts.username or "")
    if parts.password is not None:
        os.environ[PASSWORD_ENV] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def redact(text: str) -> str:
    """A URI (or a message holding URIs) with every password replaced by `***`, for messages, logs and
    files."""
    return _USERINFO.sub(r"\1:***@", text)


def ui_link(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI at `base_url`: the experiment's Runs page in model-training mode (MLflow 3
    opens experiments in its GenAI view, which has no Runs tab), or one run's page."""
    base = redact(base_url).rstrip("/")
    if run_id is not None:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def check_store(uri: str, must_exist: bool = False) -> None:
    """Check the store before Ray starts; a ConfigError says why it cannot be used (with any password
    in the URI redacted). `must_exist`: a SQLite store that is not there yet is an error too (reading
    from it would create an empty one).

    SQLite files and HTTP servers are checked without importing MLflow (two seconds that the driver
    otherwise spends while Ray starts); other stores are opened with an MLflow client.
    """
    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        import base64
        import urllib.error
        import urllib.request
        from urllib.parse import unquote, urlsplit, urlunsplit

        parts = urlsplit(uri)
        request = urllib.request.Request(
            urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])).rstrip("/") + "/health")
        user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        if parts.username is not None:  # user:password@ in the URI
            user, password = unquote(parts.username), unquote(parts.password or "")
        if user:  # HTTP basic auth, as MLflow sends it (an empty variable, as compose sets it, is none)
            token = f"{user}:{password or ''}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
        elif os.environ.get(TOKEN_ENV):
            request.add_header("Authorization", "Bearer " + os.environ[TOKEN_ENV])
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ConfigError(f"tracking store {shown}: cannot be reached ({getattr(e, 'reason', e)})") from None
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            raise ConfigError(f"tracking store {shown}: folder {path.parent} does not exist")
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                raise ConfigError(f"tracking store {shown}: {path} is not readable and writable")
            with open(path, "rb") as f:
                header = f.read(16)
            if header and header != b"SQLite format 3\x00":
                raise ConfigError(f"tracking store {shown}: {path} is not an SQLite database")
        elif must_exist:
            raise ConfigError(f"tracking store {shown}: there is no store at {path} (pass --tracking-uri, or "
                              "set $MLFLOW_TRACKING_URI, to read another)")
        elif not os.access(path.parent, os.W_OK):
            raise ConfigError(f"tracking store {shown}: folder {path.parent} is not writable")
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # any failure to open the store is bad input, reported on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tracking store {shown}: cannot be opened ({first})") from None


# -- what is logged -----------------------------------------------------------------------------------


def better(a: float, b: float, mode: str) -> bool:
    """Whether metric value a beats b under the sweep's mode ("max" or "min")."""
    return a > b if mode == "max" else a < b


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(text: str) -> str:
    """The line of an error's text that says what went wrong: its last non-empty line (a Ray task
    error's text ends with the original exception and its message), without colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def trial_error_line(trial: Any) -> str:
    """The trial's latest error, in one line, for the run's reason tag. Read from the trial's local
    error file: the copy `get_error` reads is synced to storage only later."""
    text = ""
    local = getattr(trial, "error_file", None)
    if local and Path(local).is_file():
        text = Path(local).read_text(errors="replace")
    elif hasattr(trial, "get_error"):
        text = str(trial.get_error() or "")
    return error_line(text) or "see the trial's error file"


def numeric(v: Any) -> bool:
    """Whether a result value is a number worth a point on a curve (NaN, "not measured yet", is not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def short_value(v: Any) -> str:
    """A value as a run name shows it: 3 significant digits, `64x64` for layer widths."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return "x".join(map(str, v))
    return str(v)


def searched_values(config: dict[str, Any], searched: list[str]) -> dict[str, Any]:
    """The trial's values of the searched keys (dotted names), in the search space's order."""
    from rlsweep.config import flatten

    flat = flatten(config)
    return {k: flat.get(k) for k in searched}


def trial_number(experiment_tag: str | None, trial_id: str) -> str:
    """`003` for a sweep's third trial (Tune's experiment tag starts with the count, which a resumed
    sweep carries on), else the trial id."""
    head = (experiment_tag or "").split("_", 1)[0]
    return f"{int(head):03d}" if head.isdigit() else trial_id


def trial_run_name(number: str, config: dict[str, Any], searched: list[str]) -> str:
    """`003 lr=0.000312 gamma=0.987 batch=1024`: the trial's number and its searched values."""
    lasts = [k.rsplit(".", 1)[-1] for k in searched]
    values = searched_values(config, searched)
    parts = [f"{_SHORT.get(last, last) if lasts.count(last) == 1 else key}={short_value(values[key])}"
             for key, last in zip(searched, lasts, strict=True)]
    return " ".join([number, *parts])[:250]


def run_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as a runnable experiment (validated, with every default filled in)."""
    return ExperimentConfig.model_validate(config).model_dump(mode="json")


@dataclass(frozen=True)
class RunInfo:
    """What rlsweep reads back of a run."""

    run_id: str
    tags: dict[str, str]
    params: dict[str, str]


class Tracker:
    """Writes and reads runs of one MLflow experiment; the only holder of an MlflowClient."""

    PARAM_MAX = 6000  # MLflow's limit on a param value's length

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(uri)
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            location = f"{artifact_root}/{experiment}" if artifact_root else None
            self.experiment_id = self._client.create_experiment(experiment, artifact_location=location)
        else:
            if exp.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment {experiment!r} is deleted; restore it or pick another name")
            self.experiment_id = exp.experiment_id

    # -- finding runs

    @staticmethod
    def _query(tags: dict[str, str]) -> str:
        return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

    def find(self, **tags: str) -> str | None:
        """The newest run whose tags match, or None."""
        runs = self._client.search_runs([self.experiment_id], filter_string=self._query(tags), max_results=1,
                                        order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def search(self, **tags: str) -> list[RunInfo]:
        """Every run whose tags match (up to 1000)."""
        runs = self._client.search_runs([self.experiment_id], filter_string=self._query(tags), max_results=1000)
        return [RunInfo(r.info.run_id, dict(r.data.tags), dict(r.data.params)) for r in runs]

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self._client.get_run(run_id).data.tags)

    def params(self, run_id: str) -> dict[str, str]:
        return dict(self._client.get_run(run_id).data.params)

    def last_step(self, run_id: str) -> int:
        """The last env step the run's history holds, -1 for none."""
        return max((step for step, _ in self.history(run_id, M.ENV_STEPS)), default=-1)

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's (step, value) history, by step."""
        return sorted((m.step, m.value) for m in self._client.get_metric_history(run_id, key))

    # -- writing runs

    def start(self, name: str, tags: dict[str, str]) -> str:
        return self._client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def reopen(self, run_id: str) -> None:
        """Marks a run that a resumed sweep carries on as running again."""
        self._client.update_run(run_id, status="RUNNING")
        self._client.set_tag(run_id, TAG_STATUS, "running")

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._client.set_tag(run_id, key, value)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, self.param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=items[i:i + 100])

    @classmethod
    def param_value(cls, v: Any) -> str:
        """A param as MLflow stores it (so that stored params can be compared with a config)."""
        return str(v)[:cls.PARAM_MAX]

    def log_metrics(self, run_id: str, values: dict[str, Any], step: int) -> None:
        """One step's numbers (NaN left out; other values too)."""
        self.log_rows(run_id, [(step, int(time.time() * 1000), {k: v for k, v in values.items() if numeric(v)})])

    def log_rows(self, run_id: str, rows: Iterable[tuple[int, int, dict[str, Any]]]) -> None:
        """(step, timestamp in ms, values) rows, written in as few batches as MLflow allows; every number
        is written, NaN and infinities included."""
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), ts, step) for step, ts, values in rows for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self._client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def log_yaml(self, run_id: str, data: dict[str, Any], name: str, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            self._client.log_artifact(run_id, str(path), folder)

    def log_artifacts(self, run_id: str, local_dir: str | Path, folder: str | None = None) -> None:
        self._client.log_artifacts(run_id, str(local_dir), folder)

    def log_checkpoint(self, run_id: str, local_dir: str | Path, folder: str) -> None:
        """A checkpoint into `folder`, replacing the one there: its state.json (which holds the other
        files' checksum) goes last, so a reader during the upload finds the old checkpoint whole or a
        checksum mismatch that says so, never a mix it would load."""
        from rlsweep.ppo.checkpoint import STATE_FILE

        d = Path(local_dir)
        for path in sorted(d.rglob("*"), key=lambda p: p.name == STATE_FILE):
            if path.is_file():
                parent = path.parent.relative_to(d).as_posix()
                self._client.log_artifact(run_id, str(path), folder if parent == "." else f"{folder}/{parent}")

    def set_status(self, run_id: str, status: str, reason: str | None = None, mlflow_status: str | None = None) -> None:
        """rlsweep's status tag (and its reason); with `mlflow_status`, also ends the run in MLflow."""
        self._client.set_tag(run_id, TAG_STATUS, status)
        if reason:
            self._client.set_tag(run_id, TAG_REASON, reason[:5000])
        if mlflow_status:
            self._client.set_terminated(run_id, status=mlflow_status)
