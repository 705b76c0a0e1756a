"""A results folder on a full disk: told in one line, stopped as Ctrl-C would stop it, nothing lost.

When the disk under `results_dir` fills up, Tune's copy of a new checkpoint into the trial folder fails
part-way (the copy is left cut short: `ppo.checkpoint.is_whole` says so and nothing picks it), the
trial fails with `[Errno 28] No space left on device`, and Tune writes a pickle of that error which is
itself cut short, and which Tune's own result table then fails to read (`EOFError`). Restarting the
trial could only fill the disk again. So rlsweep stops the run as for Ctrl-C: every trial keeps its
last whole checkpoint, and once there is space `rlsweep resume` (a sweep) or `train --restore` (the
checkpoint named) continues.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import signal
from pathlib import Path
from typing import Any

from ray import tune

from rlsweep import compat
from rlsweep.ppo.checkpoint import is_whole
from rlsweep.tracking.runs import trial_error_text

log = logging.getLogger("rlsweep")

_NO_SPACE = re.compile(rf"\[Errno {errno.ENOSPC}\]|No space left on device", re.IGNORECASE)


def no_space(text: str) -> bool:
    """Whether an error's text says that a disk was full."""
    return bool(_NO_SPACE.search(text))


def _not_a_full_disk(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, OSError) and no_space(str(error)))


def quiet_tracebacks() -> None:
    """Drops the tracebacks Tune logs of the saves a full disk failed (a trial's checkpoint, its
    experiment state): `StopOnFullDisk` names the disk once."""
    for name in compat.TUNE_SAVE_LOGGERS:
        logging.getLogger(name).addFilter(_not_a_full_disk)


def no_space_line(results_dir: str | Path, trial_dir: str | Path | None = None) -> str:
    """The one line for a full disk under `results_dir`: which folder, and (for a trial) the last whole
    checkpoint it keeps."""
    line = f"results_dir {results_dir} is full (no space left on device)"
    if trial_dir is not None:
        last = compat.latest_checkpoint(Path(trial_dir), usable=is_whole)
        line += f"; trial {Path(trial_dir).name} keeps its last whole checkpoint, {last}" if last else \
            f"; trial {Path(trial_dir).name} had saved no whole checkpoint yet"
    return line


def drop_unreadable_error_pickles(experiment_dir: str | Path) -> None:
    """Removes the trials' error pickles that a full disk cut short (their text is in error.txt): Tune's
    result table reads every one and fails on the first it cannot."""
    for path in Path(experiment_dir).glob(f"*/{compat.TRIAL_ERROR_PICKLE}"):
        try:
            with open(path, "rb") as f:
                pickle.load(f)
        except Exception:  # noqa: BLE001 - whatever cannot be read back is of no use to anyone
            try:
                os.remove(path)
            except OSError:
                pass


def fit(tuner: Any, experiment_dir: str | Path) -> Any:
    """`tuner.fit()`, whose result table is read again once the error pickles a full disk cut short are
    gone (Tune ran to its end; only its table of what happened could not be read)."""
    try:
        return tuner.fit()
    except (EOFError, pickle.UnpicklingError):
        drop_unreadable_error_pickles(experiment_dir)
        return tuner.get_results()


class StopOnFullDisk(tune.Callback):
    """Stops the run as Ctrl-C would once a trial failed because `results_dir`'s disk is full; `why`
    is then the one line (None before)."""

    def __init__(self, results_dir: str | Path):
        self.results_dir = str(results_dir)
        self.why: str | None = None

    def reason(self) -> str | None:
        """The one line, once the run was stopped for a full disk; None before."""
        return self.why

    def _check(self, trial: Any) -> None:
        latest = trial_error_text(trial).rsplit("Failure # ", 1)[-1]  # error.txt holds every failure
        if self.why is not None or not no_space(latest):
            return
        self.why = no_space_line(self.results_dir, trial.path)
        log.error("%s; stopping, as for Ctrl-C", self.why)
        signal.raise_signal(signal.SIGINT)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial failed and Tune would restart it: not onto a full disk."""
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial failed for good: the others would fill the disk next."""
        self._check(trial)
