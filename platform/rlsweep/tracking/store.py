"""Where the MLflow store is, whether it can be used, and the credentials in its URI.

A `Store` names a store and the experiment in it; `Store.tracker()` opens a `Tracker` on it, the only
object that talks to MLflow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rlsweep.config import ConfigError, ExperimentConfig, TrackingConfig
from rlsweep.tracking.tracker import Tracker


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
        """The store and experiment an experiment's runs go to (`resolve_uri`, `experiment_name`)."""
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


_TRAINING_MODE = "workflowType=machine_learning"


def ui_link(base_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI at `base_url`, in model-training mode (MLflow 3 opens experiments and
    runs in its GenAI view, which has no Runs tab): the experiment's Runs page, or one run's page."""
    base = redact(base_url).rstrip("/")
    if run_id is not None:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{_TRAINING_MODE}"
    return f"{base}/#/experiments/{experiment_id}/runs?{_TRAINING_MODE}"


def trials_link(base_url: str, experiment_id: str, parent_run_id: str, metric: str, mode: str,
                charts: bool = False) -> str:
    """The Runs page listing a sweep's trials (the parent run's children) best first by `metric`
    (`mode` min: ascending); `charts`: their curves overlaid instead of the table."""
    from urllib.parse import quote

    from rlsweep.metrics import mlflow_key

    metric = mlflow_key(metric)
    only_its_trials = quote(f"tags.mlflow.parentRunId = '{parent_run_id}'", safe="'")
    link = (f"{ui_link(base_url, experiment_id)}&searchFilter={only_its_trials}"
            f"&orderByKey={quote(f'metrics.`{metric}`')}&orderByAsc={'true' if mode == 'min' else 'false'}")
    return link + "&compareRunsMode=CHART" if charts else link


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
    try:
        Tracker.probe(uri)
    except Exception as e:  # any failure to open the store is bad input, reported on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tracking store {shown}: cannot be opened ({first})") from None
