"""Which trial is best: the one rule that `sweep`'s summary, `rlsweep best`, the parent run's report
and the tests all use.

A row is a dict with at least `trial_id` and the metric; `env_steps` breaks ties.
"""

from __future__ import annotations

import math
from typing import Any

from rlsweep import metrics as M


def score(row: dict[str, Any], metric: str) -> float | None:
    """The row's metric if it is a finite number, else None (not ranked)."""
    v = row.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def rank(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Rows with a finite metric, best first. Ties go to the trial that needed fewer env steps, then to
    the earlier trial id, so the same rows always give the same order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(row: dict[str, Any]) -> tuple[float, float, str]:
        steps = row.get(M.ENV_STEPS)
        return (sign * score(row, metric), steps if isinstance(steps, (int, float)) else math.inf,
                str(row.get("trial_id", "")))

    return sorted((r for r in rows if score(r, metric) is not None), key=key)


def best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best row under `rank`, or None when no row has a finite metric."""
    ranked = rank(rows, metric, mode)
    return ranked[0] if ranked else None
