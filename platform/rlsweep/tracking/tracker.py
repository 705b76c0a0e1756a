"""The `Tracker`: reads and writes the runs of one MLflow experiment; the only holder of an MLflow
client in rlsweep."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlsweep import metrics as M
from rlsweep.config import ConfigError
from rlsweep.tracking.runs import TAG_REASON, TAG_STATUS, numeric
from rlsweep.tracking.status import Outcome, RunStatus


@dataclass(frozen=True)
class RunInfo:
    """What rlsweep reads back of a run."""

    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    name: str = ""


class Tracker:
    """Writes and reads runs of one MLflow experiment; the only holder of an MlflowClient."""

    PARAM_MAX = 6000  # MLflow's limit on a param value's length

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None, create: bool = True):
        """Opens `experiment` in the store at `uri`, creating it (its artifacts under `artifact_root`)
        unless `create` is False: then a missing experiment is a LookupError."""
        from mlflow.tracking import MlflowClient

        from rlsweep.compat import sqlite_write_ahead_log

        self._client = MlflowClient(uri, registry_uri=uri)  # the store's own model registry
        sqlite_write_ahead_log(self._client)
        self.experiment = experiment
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None and not create:
            raise LookupError(f"no MLflow experiment {experiment!r}")
        if exp is None:
            location = f"{artifact_root}/{experiment}" if artifact_root else None
            self.experiment_id = self._client.create_experiment(experiment, artifact_location=location)
        else:
            if exp.lifecycle_stage == "deleted":
                raise ConfigError(f"MLflow experiment {experiment!r} is deleted; restore it or pick another name")
            self.experiment_id = exp.experiment_id

    # -- the store as a whole

    @staticmethod
    def probe(uri: str) -> None:
        """Raises whatever MLflow raises when the store at `uri` cannot be read."""
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)

    @staticmethod
    def experiments(uri: str) -> list[str]:
        """The names of the store's (active) experiments."""
        from mlflow.tracking import MlflowClient

        return [e.name for e in MlflowClient(uri).search_experiments()]

    @staticmethod
    def download(uri: str, artifact_uri: str, dest: str) -> str:
        """An MLflow artifact URI (`runs:/...`, `mlflow-artifacts:/...`, `models:/NAME@ALIAS`) downloaded into
        `dest`; its local path."""
        import mlflow.artifacts

        if artifact_uri.startswith("models:/"):  # resolved here: MLflow would ask its process-wide registry
            artifact_uri = Tracker.model_version_uri(uri, artifact_uri)
        return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dest, tracking_uri=uri)

    @staticmethod
    def model_version_uri(uri: str, ref: str) -> str:
        """Where the files of `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/NAME/latest` (a path
        may follow) are, in the store `uri`'s registry; an MlflowException or ValueError when it names none."""
        from mlflow.tracking import MlflowClient

        head, _, path = ref.removeprefix("models:/").partition("/")
        client = MlflowClient(uri, registry_uri=uri)
        if "@" in head:
            name, alias = head.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, (version, _, path) = head, path.partition("/")
            if version == "latest":
                versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
                if not versions:
                    raise ValueError(f"registered model {name!r} has no version")
                version = str(max(versions))
            elif not version.isdigit():
                raise ValueError(f"expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest, "
                                 f"not {ref!r}")
        base = client.get_model_version_download_uri(name, version).rstrip("/")
        return f"{base}/{path}" if path else base

    # -- finding runs

    @staticmethod
    def _query(tags: dict[str, str]) -> str:
        return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

    def find(self, **tags: str) -> str | None:
        """The newest run whose tags match, or None."""
        runs = self._client.search_runs([self.experiment_id], filter_string=self._query(tags), max_results=1,
                                        order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def search(self, max_results: int = 1000, **tags: str) -> list[RunInfo]:
        """The runs whose tags match (every run with no tags given), newest first, up to `max_results`."""
        runs = self._client.search_runs([self.experiment_id], filter_string=self._query(tags), max_results=max_results,
                                        order_by=["attributes.start_time DESC"])
        return [RunInfo(r.info.run_id, dict(r.data.tags), dict(r.data.params), r.info.run_name or "") for r in runs]

    def tags(self, run_id: str) -> dict[str, str]:
        """The run's tags."""
        return dict(self._client.get_run(run_id).data.tags)

    def params(self, run_id: str) -> dict[str, str]:
        """The run's params (as MLflow stores them: strings)."""
        return dict(self._client.get_run(run_id).data.params)

    def last_step(self, run_id: str) -> int:
        """The last env step the run's history holds, -1 for none."""
        return max((step for step, _ in self.history(run_id, M.ENV_STEPS)), default=-1)

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's (step, value) history, by step (`key` as Tune names it)."""
        return sorted((m.step, m.value) for m in self._client.get_metric_history(run_id, M.mlflow_key(key)))

    # -- writing runs

    def start(self, name: str, tags: dict[str, str]) -> str:
        """Creates a run named `name` with `tags`; its id."""
        return self._client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def reopen(self, run_id: str) -> None:
        """Marks a run that a resumed sweep carries on as running again."""
        self._client.update_run(run_id, status="RUNNING")
        self._client.set_tag(run_id, TAG_STATUS, RunStatus.RUNNING.value)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Sets one tag of a run."""
        self._client.set_tag(run_id, key, value)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Sets several tags of a run in one call."""
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def delete_tag(self, run_id: str, key: str) -> None:
        """Removes one tag of a run."""
        self._client.delete_tag(run_id, key)

    def rename(self, run_id: str, name: str) -> None:
        """Gives a run another name."""
        self._client.update_run(run_id, name=name)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Logs params (values as `param_value` turns them into strings), in MLflow's batches."""
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

    def log_rows(self, run_id: str, rows: Iterable[tuple[int, int, dict[str, Any]]],
                 tags: dict[str, str] | None = None) -> None:
        """(step, timestamp in ms, values) rows, written in as few batches as MLflow allows; every number
        is written, NaN and infinities included, each under its name in MLflow (`metrics.mlflow_key`).
        `tags` go with the last batch (one call where there are few rows)."""
        from mlflow.entities import Metric, RunTag

        metrics = [Metric(M.mlflow_key(k), float(v), ts, step) for step, ts, values in rows for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tagged = [RunTag(k, v) for k, v in (tags or {}).items()]
        if len(tagged) > 100:  # MLflow takes at most 100 tags per batch
            self.set_tags(run_id, dict(list((tags or {}).items())[100:]))
            tagged = tagged[:100]
        size = 1000 - len(tagged)  # and at most 1000 metrics and tags together
        for i in range(0, len(metrics), size):
            last = i + size >= len(metrics)
            self._client.log_batch(run_id, metrics=metrics[i:i + size], tags=tagged if last else [])
        if tagged and not metrics:
            self._client.log_batch(run_id, tags=tagged)

    def log_yaml(self, run_id: str, data: dict[str, Any], name: str, folder: str | None = None) -> None:
        """Writes `data` as YAML into the artifact `name` (in `folder`)."""
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            # (libyaml's emitter where PyYAML has it: the same text, ~5x faster than PyYAML's own)
            path.write_text(yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
            self._client.log_artifact(run_id, str(path), folder)

    def log_artifacts(self, run_id: str, local_dir: str | Path, folder: str | None = None) -> None:
        """Uploads a local folder's files into the run's artifacts (in `folder`)."""
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

    def register(self, run_id: str, folder: str, name: str, alias: str) -> str:
        """Registers the MLflow Model in the run's artifact `folder` as a new version of the registered
        model `name` (made when missing) and points `alias` at it; the version."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self._client.get_run(run_id).info.artifact_uri}/{folder}"
        version = self._client.create_model_version(name, source, run_id=run_id).version
        self._client.set_registered_model_alias(name, alias, version)
        return str(version)

    @staticmethod
    def status_tags(outcome: Outcome) -> dict[str, str]:
        """rlsweep's status tag and its reason."""
        tags = {TAG_STATUS: outcome.status.value}
        if outcome.reason:
            tags[TAG_REASON] = outcome.reason[:5000]
        return tags

    def set_status(self, run_id: str, outcome: Outcome, rows: Iterable[tuple[int, int, dict[str, Any]]] = (),
                   tags: dict[str, str] | None = None) -> None:
        """rlsweep's status tag and its reason, in one call with `rows` (a run's last metric rows) and other
        `tags`; a status that ends a run ends it in MLflow too."""
        self.log_rows(run_id, rows, {**(tags or {}), **self.status_tags(outcome)})
        if outcome.status.mlflow_status:
            self._client.set_terminated(run_id, status=outcome.status.mlflow_status)
