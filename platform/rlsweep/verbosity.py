"""How much a command prints: rlsweep's own lines by default; with `-v`, everything Ray, Tune,
Optuna, MLflow and the MLflow server say as well.

The setting travels as an environment variable, so that trial processes (which Ray starts with the
driver's environment) follow the command's flag.
"""

from __future__ import annotations

import logging
import os

ENV = "RLSWEEP_VERBOSE"


def set_verbose(on: bool) -> None:
    """Turns `-v` on for this process and the processes it starts; False leaves the setting as it is."""
    if on:
        os.environ[ENV] = "1"


def verbose() -> bool:
    """Whether `-v` is on, in this process or in the command that started it."""
    return os.environ.get(ENV, "") not in ("", "0")


def level() -> int:
    """The level for the libraries' loggers: WARNING normally, INFO with `-v`."""
    return logging.INFO if verbose() else logging.WARNING


def tune_verbosity() -> int:
    """Tune's own console output: none (rlsweep prints its progress line), its status with `-v`."""
    return 1 if verbose() else 0
