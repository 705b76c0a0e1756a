"""When a trial stops: the experiment's stop criteria as a Tune stopper, the reason it gives, and the
one failure that is never retried."""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from rlsweep import compat
from rlsweep import metrics as M
from rlsweep.config import StopConfig


class TrialStopper(tune.Stopper):
    """Stops a trial at the first of: evaluation mean >= target (for every one of its `agents`, each
    at its own time), training return >= its target, env-step budget, training time."""

    agents = 1  # (stoppers pickled with a sweep before there were agents have no attribute of their own)

    def __init__(self, stop: StopConfig, agents: int = 1):
        self.stop = stop
        self.agents = agents

    def reason(self, result: dict[str, Any]) -> str | None:
        """Why a trial with this result stops (the first criterion it meets), or None."""
        s = self.stop
        if s.target_return is not None:
            at = result.get(M.SEEDS_AT_TARGET)
            if at is None and self.agents == 1:  # (a result from before the count: its evaluation decides)
                ev = result.get(M.EVAL_RETURN_MEAN, math.nan)
                at = int(ev == ev and ev >= s.target_return)
            if at is not None and at >= self.agents:
                return (f"every seed reached target return {s.target_return:g}" if self.agents > 1
                        else f"reached target return {s.target_return:g}")
        tr = result.get(M.EPISODE_RETURN_MEAN, math.nan)
        if s.episode_return is not None and tr == tr and tr >= s.episode_return:
            return f"reached training episode return {s.episode_return:g}"
        if s.env_steps is not None and result.get(M.ENV_STEPS, 0) >= s.env_steps:
            return f"reached {s.env_steps} env steps"
        if s.time_s is not None and result.get(M.TIME_TOTAL_S, 0.0) >= s.time_s:
            return f"reached {s.time_s:g} s of training"
        return None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # a trial that met a NaN is not stopped (its end-of-run checkpoint would hold NaN): its next
        # step fails it
        return not result.get(M.NON_FINITE) and self.reason(result) is not None

    def stop_all(self) -> bool:
        """Never: each trial stops on its own criteria."""
        return False


class NoRetryAfterDivergence(tune.Callback):
    """Tune restarts a failed trial from its last checkpoint (`max_failures`), whatever failed; a trial
    whose iteration met a NaN or an infinity fails at its next step, and a restart from an exact
    checkpoint would only diverge again, so its failure is final. Tune has no retry rule per error:
    the trial is told so through `compat.stop_retrying`."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """A result that met a NaN: the trial's coming failure is final."""
        if result.get(M.NON_FINITE):
            compat.stop_retrying(trial)
