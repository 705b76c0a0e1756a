"""Each trial's result log: Tune's JSON logger (`trial_*/result.json`, one line per result, which Tune
reads back and `ranking.sweep_rows` ranks), each line with the trial's experiment tag."""

from __future__ import annotations

from typing import Any

from ray.tune.logger import JsonLoggerCallback


class TrialResultLog(JsonLoggerCallback):
    """Tune's JSON logger, whose lines carry the trial's experiment tag (`3_lr=...`: its number in the
    sweep, which a resumed sweep carries on): Tune adds the tag to a result only after its callbacks
    have seen it, so the plain logger's lines lack it."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        """Writes the result as one JSON line, with the trial's experiment tag."""
        tag = getattr(trial, "experiment_tag", None)
        super().log_trial_result(iteration, trial, {**result, "experiment_tag": tag} if tag else result)
