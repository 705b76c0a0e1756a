"""Where a command's seconds go: named moments of the driver, written out at exit as one JSON line on
stderr when $RLSWEEP_TIMELINE is set (`benchmarks/start_time.py` reads it); nothing otherwise.

Moments are wall-clock times (`time.time()`), so a caller that knows when it launched the process can
place them: the process's own clock starts only once Python runs.
"""

from __future__ import annotations

import json
import os
import sys
import time

ENV = "RLSWEEP_TIMELINE"
_moments: dict[str, float] = {}


def mark(name: str) -> None:
    """Notes the first time `name` happened."""
    _moments.setdefault(name, time.time())


def write() -> None:
    """The moments so far, as `rlsweep-timeline {...}` on stderr, when $RLSWEEP_TIMELINE is set."""
    if os.environ.get(ENV):
        print("rlsweep-timeline " + json.dumps(_moments), file=sys.stderr, flush=True)
