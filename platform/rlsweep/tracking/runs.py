"""What a run in MLflow holds, as plain data: its tags, its name, the values and errors it records.

No MLflow and no Ray here: the Tune callback, the sweep's parent run, the live line and the commands
all name runs and read trials' errors the same way through these.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from rlsweep.config import ExperimentConfig, flatten

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
TAG_CLONED_FROM = "rlsweep.pbt.cloned_from"  # a PBT trial: the trial it last continued from (`metrics.CLONED_FROM`)
TAG_CLONED_RUN = "rlsweep.pbt.cloned_from_run"  # ... that trial's MLflow run
TAG_CLONED_STEP = "rlsweep.pbt.cloned_at_env_steps"  # ... and the env steps its checkpoint held
TAG_LINEAGE = "rlsweep.pbt.lineage"  # a PBT trial's every copy, "<trial id>@<env steps> ...", oldest first
TAG_PHASE = "rlsweep.phase"  # a confirmation trial: "confirm"; its sweep's parent, once the search is done: "confirm"
TAG_CONFIRMS = "rlsweep.confirms_trial_id"  # a confirmation trial: the search trial whose configuration it retrains
TAG_WINNER = "rlsweep.winner"  # on a sweep's winning trial (the confirmed one, after a confirmation round): "true"
TAG_VIDEO = "rlsweep.video"  # on a sweep's parent: its winner.gif, or why it has none
WINNER_MARK = " (winner)"  # after the winning trial's run name, where the runs table and chart legends show it
TAG_PARENT = "mlflow.parentRunId"
TAG_DESCRIPTION = "mlflow.note.content"  # the run's description in the MLflow UI
TAG_RUN_COLOR = "mlflow.runColor"  # the run's colour in the UI's charts and table

# matplotlib's tab20, dark shades first: twenty trials in a row get twenty colours
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")


def run_color(number: str) -> str:
    """A trial run's colour, by its number: consecutive trials never share one (twenty in a row)."""
    return _COLORS[(int(number) - 1) % len(_COLORS) if number.isdigit() else 0]

# short names for searched keys in run names (the last part of the key otherwise)
_SHORT = {"train_batch_size": "batch", "minibatch_size": "minibatch", "num_epochs": "epochs",
          "hidden_sizes": "hidden", "gae_lambda": "lambda", "num_envs_per_worker": "envs"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(text: str) -> str:
    """The line of an error's text that says what went wrong: its last non-empty line (a Ray task
    error's text ends with the original exception and its message), without colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def trial_error_text(trial: Any) -> str:
    """The text of the trial's errors so far. Read from the trial's local error file: the copy
    `get_error` reads is synced to storage only later."""
    local = getattr(trial, "error_file", None)
    if local and Path(local).is_file():
        return Path(local).read_text(errors="replace")
    return str(trial.get_error() or "") if hasattr(trial, "get_error") else ""


def trial_error_line(trial: Any) -> str:
    """The trial's latest error, in one line, for the run's reason tag."""
    return error_line(trial_error_text(trial)) or "see the trial's error file"


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
    flat = flatten(config)
    return {k: flat.get(k) for k in searched}


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
