"""The stop criteria a trial is held to."""

import math

from rlsweep.config import StopConfig
from rlsweep.tuning import TrialStopper


def test_each_criterion_and_its_reason():
    s = TrialStopper(StopConfig(target_return=475, episode_return=400, env_steps=10_000, time_s=60))
    assert s.reason({"eval_return_mean": math.nan, "episode_return_mean": math.nan, "env_steps": 0}) is None
    assert s.reason({"eval_return_mean": 480.0}) == "reached target return 475"
    assert s.reason({"eval_return_mean": 100.0, "episode_return_mean": 401.0}) == "reached training episode return 400"
    assert s.reason({"env_steps": 10_000}) == "reached 10000 env steps"
    assert s.reason({"time_total_s": 61.0}) == "reached 60 s of training"
    assert s("t", {"env_steps": 9_999}) is False and s("t", {"env_steps": 10_001}) is True
    assert not s.stop_all()


def test_unset_criteria_never_stop():
    s = TrialStopper(StopConfig(env_steps=5))
    assert s.reason({"eval_return_mean": 1e9, "episode_return_mean": 1e9, "time_total_s": 1e9}) is None
