"""A run's stepwise series (`metrics.is_stepwise`: a learning rate, the epochs run, workers replaced, the
values PBT changes) as MLflow draws them, with fewer points: a value that repeats the one before it is
held back, and written only where its series changes (the last repeat, then the new value), at a
checkpoint (every point before a checkpoint is in MLflow) and where it ends.

MLflow draws a series as a line through its points. Points left out here all lie on a flat stretch
between two points that are written, so the chart is the same line; only the number of values MLflow
stores (each costs the writer time: `log_batch` on SQLite is ~0.1 ms a value) shrinks. A series that
never changes becomes its first and last points (and one per checkpoint). Measurements (returns, losses, timings) are written
every iteration, as they are. NaN is never a repeat. No MLflow here.
"""

from __future__ import annotations

from typing import Any

from rlsweep.metrics import is_stepwise

Row = tuple[int, int, dict[str, Any]]  # (env step, timestamp in ms, {metric: value})


class Thinned:
    """One run's stepwise series, thinned row by row; `end()` writes back what they still hold."""

    def __init__(self) -> None:
        self._last: dict[str, Any] = {}  # metric -> the value last written
        self._held: dict[str, tuple[int, int, Any]] = {}  # metric -> its latest row held back

    def copy(self) -> Thinned:
        """A copy to write from (what it becomes is kept once the writes succeed)."""
        other = Thinned()
        other._last, other._held = dict(self._last), dict(self._held)
        return other

    def rows(self, rows: list[Row]) -> list[Row]:
        """The rows to write for `rows` (in order): repeats held back, a held point put back before
        its series changes."""
        out: list[Row] = []
        for step, ts, values in rows:
            kept: dict[str, Any] = {}
            for key, value in values.items():
                if key in self._last and self._last[key] == value:  # (NaN != NaN: never a repeat)
                    self._held[key] = (step, ts, value)
                    continue
                held = self._held.pop(key, None)
                if held is not None:  # the flat stretch's last point, then the change
                    out.append((held[0], held[1], {key: held[2]}))
                kept[key] = value
                if is_stepwise(key):
                    self._last[key] = value
            if kept:
                out.append((step, ts, kept))
        return out

    def flush(self) -> list[Row]:
        """The points held back (each series' latest), to be written now (at a checkpoint: MLflow then
        has every point before it); repeats after them are held back again."""
        out = [(step, ts, {key: value}) for key, (step, ts, value) in self._held.items()]
        self._held.clear()
        return out

    def end(self) -> list[Row]:
        """`flush` where the run ends, or its history starts over (a clone under PBT): after it, every
        value is written again."""
        out = self.flush()
        self._last.clear()
        return out
