"""The live line on stderr: one trial's progress, or a sweep's trials and best metric so far."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from rlsweep import metrics as M
from rlsweep import timeline
from rlsweep.ranking import better, trial_number
from rlsweep.tracking.runs import trial_error_line, trial_run_name
from rlsweep.tuning.ray_session import short_of_resources


def _pending_word() -> str:
    return "waiting for resources" if short_of_resources() else "starting"


class ProgressLine(tune.Callback):
    """A live line on stderr, rewritten in place on a terminal and printed every few seconds otherwise.

    One trial (`rlsweep train`): its iteration, steps, returns and speed. A sweep: trials running and
    done, and the best metric so far.
    """

    def __init__(self, sweep_trials: int | None = None, metric: str = M.EVAL_RETURN_MEAN, mode: str = "max",
                 every_s: float = 5.0, searched: list[str] | None = None,
                 stop_reason: Callable[[dict[str, Any]], str | None] | None = None, title: str = "",
                 confirms: list[str] | None = None):
        self.sweep_trials, self.metric, self.mode = sweep_trials, metric, mode
        self.title = title  # what the line is about, before it ("confirmation")
        self.confirms = confirms  # a confirmation round's: the search trial numbers its trials retrain
        self.searched, self.stop_reason = list(searched or []), stop_reason
        self.every_s = every_s
        self._best: float | None = None  # the best value any trial has reported (it never goes back)
        self._ended: set[str] = set()  # trials that completed or failed
        self._last = 0.0
        self._start = time.monotonic()

    @staticmethod
    def trial_line(trial_id: str, r: dict[str, Any]) -> str:
        """One trial's live line: iteration, env steps, returns, speed, time."""
        def value(name: str) -> str:  # with several seeds, their IQM and its interval
            if name + M.SCORE_SUFFIXES[0] in r:
                return f"{M.shown(r, name)} (IQM)"
            return f"{r.get(name, math.nan):8.2f}"

        return (
            f"[{trial_id}] iter {r.get(M.TRAINING_ITERATION, 0):>4} | {r.get(M.ENV_STEPS, 0):>9,} steps | "
            f"return {value(M.EPISODE_RETURN_MEAN)} | eval {value(M.EVAL_RETURN_MEAN)} | "
            f"{r.get(M.ENV_STEPS_PER_S, 0):>8,.0f} steps/s | {r.get(M.TIME_TOTAL_S, 0):6.1f} s"
        )

    def sweep_line(self, trials: list[Any]) -> str:
        # Tune sets a trial's status after the callbacks have heard it ended
        """A sweep's live line: trials done, running and pending, the best metric so far."""
        done = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | self._ended)
        running = sum(t.status == "RUNNING" and t.trial_id not in self._ended for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        waiting = f", {pending} {_pending_word()}" if pending else ""
        best = "-" if self._best is None else M.text(self._best)
        title = f"{self.title}: " if getattr(self, "title", "") else ""  # (a line pickled before titles has none)
        return (f"{title}trials {done}/{self.sweep_trials} done, {running} running{waiting} | best {self.metric} so far "
                f"({self.mode}) {best} | "
                f"{time.monotonic() - self._start:6.1f} s")

    def setup(self, **info) -> None:  # also on resume: time from this process's start of the run
        """Tune starts (or resumes) the run: time and the best so far count from now."""
        self._start = time.monotonic()
        self._best = None
        self._last = 0.0

    def _show(self, text: str, force: bool = False) -> None:
        if sys.stderr.isatty():
            self._last = time.monotonic()
            print("\r" + text, end="", file=sys.stderr, flush=True)
        elif force or time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        """While no trial reports (all waiting for a cluster's resources, say), the line still updates."""
        if time.monotonic() - self._last < self.every_s:
            return
        if self.sweep_trials:
            self._show(self.sweep_line(trials), force=True)
        elif trials and all(t.status == "PENDING" for t in trials):
            self._show(f"[{trials[0].trial_id}] {_pending_word()} | {time.monotonic() - self._start:6.1f} s", force=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        """A trial's actor is up (its setup done): a moment of the timeline."""
        timeline.mark("trial_started")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """A result: the best so far, and the live line."""
        timeline.mark("first_result")
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and (self._best is None or better(v, self._best, self.mode)):
            self._best = float(v)
        self._show(self.sweep_line(trials) if self.sweep_trials else self.trial_line(trial.trial_id, result))

    def _say(self, text: str) -> None:
        """A line of its own (on a terminal, over the live line, which the next update redraws)."""
        print(("\r\x1b[K" if sys.stderr.isatty() else "") + text, file=sys.stderr, flush=True)

    def finished_line(self, trial: Any, error: str | None = None) -> str:
        """One line per finished trial: its number and searched values, the metric, env steps, why it stopped."""
        r = trial.last_result or {}
        number = trial_number(getattr(trial, "experiment_tag", None), trial.trial_id)
        confirms = getattr(self, "confirms", None)  # (a line pickled before confirmation rounds has none)
        if confirms and number.isdigit() and 0 < int(number) <= len(confirms):
            name = "confirm " + trial_run_name(confirms[int(number) - 1], trial.config, self.searched)
        else:
            name = trial_run_name(number, trial.config, self.searched)
        why = f"failed: {error}" if error is not None else \
            (self.stop_reason(r) if self.stop_reason else None) or "stopped before its stop criteria"
        return (f"trial {name} | {self.metric} {M.shown(r, self.metric)} | "
                f"{r.get(M.ENV_STEPS, 0):,} env steps | {why}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A sweep's trial completed: a line of its own, then the live line."""
        self._ended.add(trial.trial_id)
        if self.sweep_trials:
            self._say(self.finished_line(trial))
            self._show(self.sweep_line(trials), force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """A sweep's trial failed: a line of its own with its error."""
        self._ended.add(trial.trial_id)
        if self.sweep_trials:
            self._say(self.finished_line(trial, trial_error_line(trial)[:200]))

    def on_experiment_end(self, trials, **info) -> None:
        """Ends the live line on a terminal."""
        if sys.stderr.isatty():
            print(file=sys.stderr)

