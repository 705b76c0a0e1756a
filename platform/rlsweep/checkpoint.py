"""The checkpoint format: no pickled objects.

    <dir>/learner.pt   network, optimiser and torch RNG: tensors and plain containers, read back with
                       torch.load(..., weights_only=True)
    <dir>/state.json   everything else: counters, normaliser, RNG states, worker and env states
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlsweep.config import ConfigError

FORMAT_VERSION = 1
LEARNER_FILE = "learner.pt"
STATE_FILE = "state.json"


def write(directory: str | Path, learner_state: bytes, state: dict[str, Any]) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / LEARNER_FILE).write_bytes(learner_state)
    (d / STATE_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **state}))


def read(directory: str | Path) -> tuple[bytes, dict[str, Any]]:
    d = check(directory)
    state = json.loads((d / STATE_FILE).read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{directory}: checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return (d / LEARNER_FILE).read_bytes(), state


def check(directory: str | Path, experiment: dict[str, Any] | None = None) -> Path:
    """The checkpoint directory, or a ConfigError saying what is missing or does not fit.

    With `experiment` (a config dict), also checks that the checkpoint was trained on the same env
    with the same network, so a mismatch is reported before anything starts.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"checkpoint {directory}: no such checkpoint directory")
    missing = [f for f in (LEARNER_FILE, STATE_FILE) if not (d / f).is_file()]
    if missing:
        raise ConfigError(f"checkpoint {directory}: not an rlsweep checkpoint (missing {', '.join(missing)})")
    if experiment is not None:
        saved = json.loads((d / STATE_FILE).read_text()).get("config", {})
        for section, key in _MUST_MATCH:
            old, new = saved.get(section, {}).get(key), experiment[section][key]
            if old != new:
                raise ConfigError(
                    f"--restore {directory}: checkpoint has {section}.{key}={old!r}, the experiment {new!r}"
                )
    return d


_MUST_MATCH = [("env", "id"), ("policy", "hidden_sizes"), ("policy", "activation"),
               ("policy", "normalize_observations")]


def load_policy(directory: str | Path) -> tuple[Any, Any, Any]:
    """(experiment config, numpy policy weights, observation statistics or None) of a checkpoint,
    for acting without a learner or Ray."""
    import io

    import torch

    from rlsweep.config import ExperimentConfig
    from rlsweep.envs import space_info
    from rlsweep.networks import ActorCritic
    from rlsweep.normalization import RunningMeanStd

    learner, state = read(directory)
    cfg = ExperimentConfig.model_validate(state["config"])
    net = ActorCritic(space_info(cfg.env), cfg.policy)
    net.load_state_dict(torch.load(io.BytesIO(learner), map_location="cpu", weights_only=True)["model"])
    stats = RunningMeanStd.from_dict(state["obs_stats"]) if state["obs_stats"] else None
    return cfg, net.export_weights(), stats
