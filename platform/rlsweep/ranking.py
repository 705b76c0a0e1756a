"""A sweep's trials as ranked rows: one source for the rows, one rule for their order.

Everything that names a best trial (the sweep's closing summary and table, the parent run's report
and `best_*` metric, `rlsweep best`, the tests) reads its rows through `sweep_rows` and orders them
with `rank`. The source is each trial's result log in the sweep directory (Tune's JSON logger: the
last line is the trial's latest result); Tune writes it there, whole, before its run ends, for a live
sweep as for a finished, interrupted or resumed one. No Ray here.

A row is a dict: `trial_id`, `number` (`003`: the trial's place in the sweep), `config`, `checkpoint`
(the trial's newest checkpoint folder, or None) and the values of its latest result (the metric,
`env_steps`, ...; none where it reported nothing). `env_steps` breaks ties.

A sweep with a confirmation round (`sweep.confirm`) has a second Tune run in `CONFIRM_DIR`: each of
its trials retrains one of the search's best configurations on fresh seeds. Its values go into the
search trial's row under `confirmed_<key>` (`confirmed_eval_return_mean`, `confirmed_trial_id`,
`confirmed_checkpoint`, ...), and a confirmed score outranks any search score: the winner is the best
confirmed configuration.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from rlsweep import compat
from rlsweep import metrics as M
from rlsweep.config import ConfigError
from rlsweep.ppo.checkpoint import is_whole

TRIAL_GLOB = "trial_*"  # `tuning.trainable.trial_dirname`
PARAMS_FILE = "params.json"  # Tune's JSON logger: the trial's config, written when it starts
CONFIRM_DIR = "confirm"  # the confirmation round's Tune run, inside the sweep directory
CONFIRM_ORDER = "confirms.json"  # in it, written before it starts: the search trial ids, in its trials' order
CONFIRMED = "confirmed_"  # the prefix of a row's confirmation values


def checkpoint_of(row: dict[str, Any]) -> str | None:
    """The checkpoint that stands for a row's configuration: its confirmation trial's (trained on fresh
    seeds) when it has one, else its own."""
    return row.get(CONFIRMED + "checkpoint") or row.get("checkpoint")


def trial_number(experiment_tag: str | None, trial_id: str) -> str:
    """`003` for a sweep's third trial (Tune's experiment tag starts with the count, which a resumed
    sweep carries on), else the trial id."""
    head = re.match(r"\d+", experiment_tag or "")  # (PBT appends "@perturbed[...]" to the tag)
    return f"{int(head.group()):03d}" if head else trial_id


def _last_line(path: Path) -> str | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    return lines[-1] if lines else None


def trial_row(trial_dir: Path) -> dict[str, Any] | None:
    """One trial folder's row; None where the trial has not started (no config yet). A ConfigError
    where its result log is not what Tune writes (corrupt or truncated)."""
    results = compat.trial_result_file(trial_dir)
    last = _last_line(results)
    if last is None:
        params = trial_dir / PARAMS_FILE
        try:
            config = json.loads(params.read_text()) if params.is_file() else None
        except ValueError:
            config = None
        if not isinstance(config, dict):
            return None
        values: dict[str, Any] = {}
        trial_id = trial_dir.name.removeprefix("trial_")
    else:
        try:
            values = json.loads(last)
            config, trial_id = values.pop("config"), values["trial_id"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{results}: the last result is not valid (corrupt or truncated)") from None
    checkpoint = compat.latest_checkpoint(trial_dir, usable=is_whole)  # not one a full disk cut short
    return {**values, "trial_id": trial_id, "number": trial_number(values.get("experiment_tag"), trial_id),
            "config": config, "checkpoint": str(checkpoint) if checkpoint else None}


def _trial_rows(directory: Path) -> list[dict[str, Any]]:
    rows = [row for d in directory.glob(TRIAL_GLOB) if d.is_dir() and (row := trial_row(d)) is not None]

    def order(row: dict[str, Any]) -> tuple[int, str]:
        return (int(row["number"]) if row["number"].isdigit() else math.inf, row["trial_id"])

    return sorted(rows, key=order)


def confirmation_order(directory: str | Path) -> list[str]:
    """The search trial ids the sweep's confirmation round confirms, in its trials' order ([] where
    it has not begun)."""
    path = Path(directory) / CONFIRM_DIR / CONFIRM_ORDER
    try:
        order = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        raise ConfigError(f"{path}: not the list rlsweep wrote (corrupt or truncated)") from None
    if not (isinstance(order, list) and all(isinstance(x, str) for x in order)):
        raise ConfigError(f"{path}: not the list rlsweep wrote (corrupt or truncated)")
    return order


def confirmation_rows(directory: str | Path) -> list[dict[str, Any]]:
    """The confirmation round's started trials, each with `confirms`: the search trial id it retrains."""
    order = confirmation_order(directory)
    rows = []
    for row in _trial_rows(Path(directory) / CONFIRM_DIR):
        n = int(row["number"]) if row["number"].isdigit() else 0
        if 1 <= n <= len(order):
            rows.append({**row, "confirms": order[n - 1]})
    return rows


def sweep_rows(directory: str | Path) -> list[dict[str, Any]]:
    """Every started trial of the search in `directory`, in the order the sweep started them, with its
    confirmation's values (`confirmed_*`) where it has one."""
    rows = _trial_rows(Path(directory))
    confirmed = {row["confirms"]: row for row in confirmation_rows(directory)}
    for row in rows:
        c = confirmed.get(row["trial_id"])
        if c is not None:
            row.update({CONFIRMED + k: v for k, v in c.items() if k not in ("config", "confirms")})
            first, k = c["config"].get("seed", 0), (c["config"].get("sweep") or {}).get("seeds_per_trial", 1)
            row[CONFIRMED + "seeds"] = list(range(first, first + k))
    return rows


def ranked_rows(directory: str | Path, metric: str, mode: str) -> list[dict[str, Any]]:
    """The sweep's rows with a finite metric, best first (`rank`)."""
    return rank(sweep_rows(directory), metric, mode)


def score(row: dict[str, Any], metric: str) -> float | None:
    """The row's metric if it is a finite number, else None (not ranked)."""
    v = row.get(metric)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def rank(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Rows with a finite metric, best first: the confirmed ones (by their confirmed score) before the
    rest (by their search score). Ties go to the trial that needed fewer env steps, then to the earlier
    trial id, so the same rows always give the same order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(row: dict[str, Any]) -> tuple[int, float, float, str]:
        confirmed = score(row, CONFIRMED + metric)
        steps = row.get(M.ENV_STEPS)
        return (0 if confirmed is not None else 1, sign * (confirmed if confirmed is not None else score(row, metric)),
                steps if isinstance(steps, (int, float)) else math.inf, str(row.get("trial_id", "")))

    return sorted((r for r in rows if score(r, metric) is not None), key=key)


def best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best row under `rank`, or None when no row has a finite metric."""
    ranked = rank(rows, metric, mode)
    return ranked[0] if ranked else None


def better(a: float, b: float, mode: str) -> bool:
    """Whether metric value a beats b under the sweep's mode ("max" or "min")."""
    return a > b if mode == "max" else a < b
