"""The tracking journal: every metric row a trial reports, appended to a file before MLflow sees it.

The Tune callback appends each result's row here (one JSON line, flushed) and the MLflow writer reads
the rows back from where it last got to, so rows waiting for the store cost no memory, survive the
driver being killed, and reach MLflow when the store is back (or when `rlsweep resume` runs). The
writer advances its position only after MLflow has taken the rows. No Ray, no MLflow here.

Layout: `<sweep or train dir>/.rlsweep_journal/<trial id>.jsonl`, lines `[step, time_ms, {metric: value}]`
(NaN and infinities written as JSON's NaN/Infinity tokens, which Python reads back).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, BinaryIO

FOLDER = ".rlsweep_journal"

Row = tuple[int, int, dict[str, Any]] | tuple[int, int, dict[str, Any], str]  # (..., a mark: callback.FINAL or CLONE)


class Journal:
    """Append-only rows per trial. `append` from one thread, `read`/`advance` from another."""

    def __init__(self, run_dir: str | Path):
        from rlsweep.tuning.bucket import folder_of

        self.folder = folder_of(str(run_dir)) / FOLDER  # (a sweep in a bucket: in its mirror here)
        self._files: dict[str, BinaryIO] = {}
        self._position: dict[str, int] = {}  # trial id -> bytes of its journal already in MLflow
        self._lock = threading.Lock()

    def path(self, tid: str) -> Path:
        """The journal file of trial `tid`."""
        return self.folder / f"{tid}.jsonl"

    def append(self, tid: str, row: Row) -> None:
        """Appends one (env step, timestamp in ms, values) row of trial `tid`."""
        with self._lock:
            f = self._files.get(tid)
            if f is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                f = self._files[tid] = open(self.path(tid), "ab")  # noqa: SIM115 - held until close()
            f.write(json.dumps(list(row), separators=(",", ":")).encode() + b"\n")
            f.flush()  # in the OS's hands: a killed driver loses nothing

    def read(self, tid: str, max_metrics: int = 1000) -> tuple[list[Row], int]:
        """The rows after the trial's position, about `max_metrics` metrics at most (at least one row),
        and the position after them; complete lines only (a line being written is left for later)."""
        start = self._position.get(tid, 0)
        rows: list[Row] = []
        metrics, end = 0, start
        try:
            f = open(self.path(tid), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return [], start
        with f:  # line by line: a long backlog is read a chunk at a time, not whole per chunk
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break
                step, ts, values, *mark = json.loads(line)
                if rows and metrics + len(values) > max_metrics:
                    break
                rows.append((int(step), int(ts), values, *mark))
                metrics += len(values)
                end += len(line)
        return rows, end

    def unread(self, tid: str, position: int) -> bool:
        """Whether the trial's journal holds bytes after `position` (rows, or a line being written)."""
        try:
            return self.path(tid).stat().st_size > position
        except FileNotFoundError:
            return False

    def advance(self, tid: str, position: int) -> None:
        """MLflow has every row before `position`."""
        self._position[tid] = position

    def close(self, tid: str | None = None) -> None:
        """Closes trial `tid`'s journal file (or every trial's): no more rows come for it."""
        with self._lock:
            for key in [tid] if tid is not None else list(self._files):
                f = self._files.pop(key, None)
                if f is not None:
                    f.close()
