"""Values that change while a policy trains: piecewise-constant schedules, and a run's history of them.

An experiment's `schedules` (`ppo.lr: [[0, 3e-4], [40960, 1e-4]]`) set a key from each env step on; a
PBT trial's values change when it continues from another trial with perturbed values. Both come down
to the same record, a *history*: `[[env_step, {key: value, ...}], ...]`, each entry the values in use
from that step on. `schedules_of(history)` turns a history back into an experiment's `schedules`, so a
PBT winner's values over its training can be trained again. No Ray here.
"""

from __future__ import annotations

from typing import Any

from rlsweep.config import PERTURBABLE, PPOConfig

History = list[list[Any]]  # [[env_step, {dotted key: value}], ...], steps increasing


def value_at(points: list[tuple[int, float | None]], env_steps: int) -> float | None:
    """A schedule's value after `env_steps` steps: that of its last point at or before them."""
    value = points[0][1]
    for step, v in points:
        if step > env_steps:
            break
        value = v
    return value


def scheduled(ppo: PPOConfig, schedules: dict[str, list[tuple[int, float | None]]], env_steps: int) -> PPOConfig:
    """`ppo` with each scheduled key at its value after `env_steps` steps (validated: integers stay
    integers); `ppo` itself when nothing changes."""
    changes = {key.split(".", 1)[1]: value_at(points, env_steps) for key, points in schedules.items()}
    if all(getattr(ppo, leaf) == value for leaf, value in changes.items()):
        return ppo
    return PPOConfig.model_validate({**ppo.model_dump(), **changes})


def in_use(ppo: PPOConfig) -> dict[str, Any]:
    """The values of every key that may change while training (`config.PERTURBABLE`), by dotted key."""
    return {key: getattr(ppo, key.split(".", 1)[1]) for key in PERTURBABLE}


def extend(history: History, env_steps: int, values: dict[str, Any]) -> History:
    """`history` with `values` in use from `env_steps` on (a new entry only where they differ from its
    last; an entry at the same step is replaced)."""
    if history and history[-1][1] == values:
        return history
    kept = [entry for entry in history if entry[0] < env_steps]
    return [*kept, [env_steps, dict(values)]]


def schedules_of(history: History) -> dict[str, list[list[Any]]]:
    """The `schedules` that replay a history: one per key whose value changed, each point where it did."""
    out: dict[str, list[list[Any]]] = {}
    if not history:
        return out
    for key in history[0][1]:
        points: list[list[Any]] = []
        for step, values in history:
            if key in values and (not points or points[-1][1] != values[key]):
                points.append([int(step), values[key]])
        if len(points) > 1:
            points[0][0] = 0
            out[key] = points
    return out


def replayed(config: dict[str, Any], history: str | None) -> dict[str, Any]:
    """A trial's config (a dict) that trains its values over the run again: with `schedules` from its
    history (`metrics.HP_HISTORY`, JSON) wherever a value changed (a PBT trial's perturbations)."""
    import json

    found = schedules_of(json.loads(history)) if history else {}
    if not found:
        return config
    return {**config, "schedules": {**(config.get("schedules") or {}), **found}}
