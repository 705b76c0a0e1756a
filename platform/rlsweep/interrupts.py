"""Signals that end a run: SIGTERM and SIGHUP are handled as Ctrl-C (SIGINT).

A closed terminal, `kill` or a batch scheduler's stop then ends a train or sweep the way Ctrl-C does:
Tune stops the trials, saves its state, the runs are marked interrupted and `rlsweep resume` goes on
from there (instead of Ray's driver aborting with a stack dump and runs left RUNNING).
"""

from __future__ import annotations

import signal
import threading


def _as_ctrl_c(signum: int, frame: object) -> None:
    # whatever handles Ctrl-C now (Tune's graceful stop during a fit, else Python's KeyboardInterrupt);
    # a process started in the background by a shell has SIGINT ignored, and must still stop
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def interrupt_on_termination() -> None:
    """Install the handlers (from the main thread only, as Python requires). Called at start and again
    once Ray has started, since Ray installs a SIGTERM handler of its own in the driver."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _as_ctrl_c)
