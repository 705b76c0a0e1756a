"""What the commands read before anything starts: the experiment, the tracking store, a checkpoint.

Every check here raises a `ConfigError` that names the file, key or URI at fault, before Ray starts
and before any MLflow run is created.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError, ExperimentConfig, check_seed, first_line, load_experiment


def experiment(path: str, overrides: list[str], seed: int | None = None) -> ExperimentConfig:
    """The experiment file with its `--set` overrides, validated; its env made once (unknown ids, bad
    kwargs and unsupported spaces fail here), and on a local Ray its trial must fit this machine.

    Args:
        path: the experiment YAML.
        overrides: `KEY=VALUE` strings.
        seed: replaces the experiment's seed.
    """
    from rlsweep.envs import space_info
    from rlsweep.ppo import encoders
    from rlsweep.tracking.store import take_credentials

    cfg = load_experiment(path, overrides, seed=None if seed is None else check_seed(seed, "--seed"))
    cfg.tracking.uri = take_credentials(cfg.tracking.uri)  # a password stays out of params, files and Ray
    try:
        encoders.choose(space_info(cfg.env), cfg.policy)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    results_dir(cfg)
    if not os.environ.get("RAY_ADDRESS"):  # the local Ray will have at most this machine's CPUs
        try:
            cfg.check_fits(os.cpu_count() or 1, None, "this machine")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return cfg


def results_dir(cfg: ExperimentConfig) -> Path:
    """`results_dir`, resolved: a folder, or a path where one can be made, that this process can write
    in; a ConfigError naming it otherwise. Nothing is created (a probe file comes and goes). The
    nodes of a joined cluster are probed when Ray is up (`tuning.storage`). A bucket (`s3://`) is
    probed the same way; its sweeps' folders here are the driver's mirrors of them (`tuning.bucket`)."""
    from rlsweep.tuning import bucket

    if bucket.is_uri(cfg.results_dir):
        b = bucket.Bucket.parse(cfg.results_dir)
        bucket.check(b)
        return b.mirror()
    results = Path(cfg.results_dir).resolve()
    existing = results
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == results else f"is under {existing}, a file"
        raise ConfigError(f"results_dir {cfg.results_dir}: {where}, expected a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rlsweep-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"results_dir {cfg.results_dir}: cannot write in {existing} ({e.strerror})") from None
    return results


def store_uri(cfg: ExperimentConfig) -> str:
    """The experiment's tracking store, opened: the last check, once every other input is known to be good."""
    from rlsweep.tracking.store import check_store, resolve_uri

    uri = resolve_uri(cfg.tracking)
    check_store(uri)
    return uri


def is_mlflow_uri(ref: str) -> bool:
    """Whether a checkpoint reference is an MLflow artifact URI rather than a local folder."""
    return ref.startswith(("runs:/", "mlflow-artifacts:/", "models:/"))


def is_remote(ref: str) -> bool:
    """Whether a checkpoint reference is fetched before use: an MLflow URI, or a place in a bucket
    (`s3://BUCKET/PATH?endpoint_override=...`, as `train` prints a checkpoint kept in one)."""
    return is_mlflow_uri(ref) or ref.startswith("s3://")


def fetch(ref: str, uri: str, dest: str) -> str:
    """A remote checkpoint reference (`is_remote`) fetched into `dest` (a temporary folder the caller
    removes); its local path. `uri`: the MLflow store, for an MLflow URI."""
    if is_mlflow_uri(ref):
        return download(ref, uri, dest)
    from rlsweep.tuning.bucket import Bucket, pull

    place = Bucket.parse(ref)  # (credentials come from the environment, never from the URI)
    local = Path(dest) / (place.name or "checkpoint")
    try:
        pull(place, local, remote_wins=True)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - unreachable, refused, anything: one line
        raise ConfigError(f"{place.location}: cannot download ({first_line(e)})") from None
    if not local.is_dir():
        raise ConfigError(f"{place.location}: nothing is stored there")
    return str(local)


def download(ref: str, uri: str, dest: str) -> str:
    """An MLflow artifact URI downloaded into `dest` (a temporary folder the caller removes)."""
    from rlsweep.tracking.tracker import Tracker

    try:
        return Tracker.download(uri, ref, dest)
    except Exception as e:  # noqa: BLE001 - any failure to fetch it is bad input, said on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{ref}: cannot download ({first})") from None


@dataclass
class Checkpoint:
    """A checkpoint given on the command line, verified: its local folder and its saved state.

    Args:
        ref: as the user gave it (a folder, or an MLflow artifact URI).
        path: the local folder (downloaded for a URI).
        state: its `state.json` (counters, config, ...).
    """

    ref: str
    path: str
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def verified(cls, ref: str, local: str, cfg: ExperimentConfig | None = None) -> Checkpoint:
        """Reads and verifies the checkpoint at `local` once: whole, and (with `cfg`) trained on the
        same env with the same network."""
        from rlsweep.ppo import checkpoint
        from rlsweep.tracking.model import policy_folder

        local = str(policy_folder(local, ref))  # (a registered model: the checkpoint it holds)
        folder, state = checkpoint.check(local, cfg.model_dump(mode="json") if cfg is not None else None)
        return cls(ref, str(Path(folder).resolve()), state)

    def restore_tags(self) -> dict[str, str]:
        """Where a `train --restore` run continued from: the checkpoint as given, its run, its env steps."""
        from rlsweep.tracking.runs import TAG_RESTORED_FROM, TAG_RESTORED_RUN, TAG_RESTORED_STEP

        tags = {TAG_RESTORED_FROM: self.ref if is_remote(self.ref) else str(Path(self.ref).resolve()),
                TAG_RESTORED_STEP: str(self.state.get("env_steps", ""))}
        if self.ref.startswith("runs:/"):
            tags[TAG_RESTORED_RUN] = self.ref.removeprefix("runs:/").split("/", 1)[0]
        return tags
