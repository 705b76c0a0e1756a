"""The checkpoint format: no pickled objects.

    <dir>/learner.pt   network, optimiser and torch RNG: tensors and plain containers, read back with
                       torch.load(..., weights_only=True)
    <dir>/state.json   everything else: counters, normaliser, RNG states, worker and env states, and
                       the SHA-256 of learner.pt

Each file is written to a temporary name and renamed into place (state.json last), so a crash while
saving leaves the previous files or no checkpoint, never a mix; the checksum catches a learner.pt that
was truncated or swapped afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError, EnvConfig, PolicyConfig, first_line

FORMAT_VERSION = 1
LEARNER_FILE = "learner.pt"
STATE_FILE = "state.json"
_CHECKSUM = "learner_sha256"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write(directory: str | Path, learner_state: bytes, state: dict[str, Any]) -> None:
    """Writes a checkpoint into `directory` (made if needed): learner.pt first, then state.json.

    Args:
        directory: the checkpoint folder; files of an earlier checkpoint there are replaced.
        learner_state: the learner's `state_bytes()`, written as learner.pt.
        state: JSON-able data (`Training.state()`'s second part); state.json holds it with the format
            version and learner.pt's SHA-256 added.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / LEARNER_FILE, learner_state)
    meta = {"format_version": FORMAT_VERSION, _CHECKSUM: hashlib.sha256(learner_state).hexdigest(), **state}
    _write_atomic(d / STATE_FILE, json.dumps(meta).encode())


def _state(d: Path, directory: str | Path) -> dict[str, Any]:
    try:
        state = json.loads((d / STATE_FILE).read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"checkpoint {directory}: {STATE_FILE} is not valid JSON (corrupt or truncated)") from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {directory}: {STATE_FILE} does not hold an rlsweep checkpoint's state")
    if state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{directory}: checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state


def read(directory: str | Path) -> tuple[bytes, dict[str, Any]]:
    """(learner.pt's bytes, the state) of a checkpoint whose files are whole; a ConfigError otherwise."""
    _, data, state = _load(directory)
    return data, state


def is_whole(directory: str | Path) -> bool:
    """Whether `directory` holds a checkpoint whose files are all there and match their checksum (a
    copy cut short, by a full disk or a crash, is not)."""
    try:
        _load(directory)
    except (ConfigError, OSError):
        return False
    return True


def _load(directory: str | Path) -> tuple[Path, bytes, dict[str, Any]]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"checkpoint {directory}: no such checkpoint directory")
    missing = [f for f in (LEARNER_FILE, STATE_FILE) if not (d / f).is_file()]
    if missing:
        raise ConfigError(f"checkpoint {directory}: not an rlsweep checkpoint (missing {', '.join(missing)})")
    state = _state(d, directory)
    data = (d / LEARNER_FILE).read_bytes()
    expected = state.get(_CHECKSUM)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:  # older checkpoints have none
        raise ConfigError(f"checkpoint {directory}: {LEARNER_FILE} does not match the checksum in {STATE_FILE} "
                          "(truncated, corrupt or replaced)")
    return d, data, state


def check(directory: str | Path, experiment: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """(The checkpoint directory, its state), or a ConfigError saying what is missing, corrupt or does
    not fit.

    With `experiment` (a config dict), also checks that the checkpoint was trained on the same env
    with the same network, so a mismatch is reported before anything starts.
    """
    d, _, state = _load(directory)
    if experiment is not None:
        saved = _saved_config(state)
        for section, key in _MUST_MATCH:
            _must_match(directory, section, key, saved, experiment)
        from rlsweep.envs import space_info
        from rlsweep.ppo import encoders

        kinds = []  # the network each builds: mlp or cnn, then the settings of that network
        for config in (saved, experiment):
            kinds.append(encoders.kind_of(space_info(EnvConfig.model_validate(config["env"])),
                                          PolicyConfig.model_validate(config["policy"])))
        if kinds[0] != kinds[1]:
            raise ConfigError(f"--restore {directory}: checkpoint has a {kinds[0]} policy, the experiment would build "
                              f"a {kinds[1]} (policy.encoder {experiment['policy'].get('encoder')!r}): set "
                              f"policy.encoder: {kinds[0]}")
        for key in _NETWORK[kinds[0]]:
            _must_match(directory, "policy", key, saved, experiment)
        agents = len(state.get("seeds") or [0])  # (a checkpoint from before the agent axis holds one)
        wanted = ((experiment.get("sweep") or {}).get("seeds_per_trial")) or 1
        if agents != wanted:
            raise ConfigError(f"--restore {directory}: checkpoint holds {agents} agent(s) (seeds "
                              f"{state.get('seeds')}), this run would train {wanted}: add --seeds {agents}")
    return d, state


_MUST_MATCH = [("env", "id"), ("env", "preset"), ("policy", "normalize_observations")]
_NETWORK = {"mlp": ("hidden_sizes", "activation"), "cnn": ("cnn_dense", "shared_trunk")}  # what shapes each


def _saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """The experiment config a checkpoint was trained with, as a dict; a checkpoint from before
    `policy.encoder` existed trained an mlp, whatever its observations."""
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    policy = saved.get("policy") or {}
    if "encoder" not in policy:
        saved = {**saved, "policy": {**policy, "encoder": "mlp"}}
    return saved


def _must_match(directory: Any, section: str, key: str, saved: dict[str, Any], experiment: dict[str, Any]) -> None:
    """A ConfigError when the checkpoint's `section.key` differs from the experiment's (a key either
    lacks: its default)."""
    model = EnvConfig if section == "env" else PolicyConfig
    default = model.model_fields[key].get_default(call_default_factory=True)
    old, new = (saved.get(section) or {}).get(key, default), (experiment.get(section) or {}).get(key, default)
    if old != new:
        raise ConfigError(f"--restore {directory}: checkpoint has {section}.{key}={old!r}, the experiment {new!r}")


def load_policy(directory: str | Path) -> tuple[Any, Any, Any]:
    """(experiment config, numpy policy weights of its K agents, their observation statistics or None)
    of a checkpoint, for acting without a learner or Ray."""
    import io
    import warnings

    import torch

    from rlsweep.config import ExperimentConfig
    from rlsweep.envs import space_info
    from rlsweep.ppo import networks
    from rlsweep.ppo.normalization import RunningMeanStd

    learner, state = read(directory)
    cfg = ExperimentConfig.model_validate(_saved_config(state))
    net = networks.make(space_info(cfg.env), cfg.policy, state.get("seeds", [cfg.seed]))
    try:  # tensors and plain containers only: a pickled object in it is refused, never run
        with warnings.catch_warnings():  # (torch warns of a foreign pickle protocol before refusing it)
            warnings.simplefilter("ignore", UserWarning)
            saved = torch.load(io.BytesIO(learner), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch says UnpicklingError, RuntimeError or others by version
        raise ConfigError(f"checkpoint {directory}: {LEARNER_FILE} is not a weights-only file; refused, nothing "
                          f"in it was run ({first_line(e)[:200]})") from None
    net.load_state_dict(networks.upgrade_state_dict(saved["model"]))
    saved = state["obs_stats"]
    stats = None if not saved else [RunningMeanStd.from_dict(d) for d in (saved if isinstance(saved, list) else [saved])]
    return cfg, net.export_weights(), stats
