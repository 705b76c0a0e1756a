"""The stop criteria a trial is held to, and the reason each gives."""

import math

from rlsweep.config import StopConfig
from rlsweep.tuning.stopper import TrialStopper


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


def test_a_trial_that_diverged_fails_for_good():
    from ray.tune.experiment import Trial

    from rlsweep import metrics as M
    from rlsweep.tuning.stopper import NoRetryAfterDivergence

    trial = Trial("__fake", stub=True, max_failures=3)
    callback = NoRetryAfterDivergence()
    callback.on_trial_result(0, [trial], trial, {M.ENV_STEPS: 64})
    trial.run_metadata.num_failures = 1
    assert trial.should_recover()  # any other failure is retried
    callback.on_trial_result(0, [trial], trial, {M.ENV_STEPS: 128, M.NON_FINITE: "policy_loss is nan"})
    assert not trial.should_recover()
