"""The stop criteria a trial is held to, and the lines a sweep prints."""

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


def test_the_sweep_line_shows_the_best_so_far_under_the_sweeps_metric_and_mode(monkeypatch):
    from types import SimpleNamespace

    from rlsweep.tuning import ray_session
    from rlsweep.tuning.progress import ProgressLine

    line = ProgressLine(sweep_trials=3, metric="value_loss", mode="min")
    trials = [SimpleNamespace(trial_id="a", status="RUNNING"), SimpleNamespace(trial_id="b", status="TERMINATED")]
    for v in (5.0, 2.0, 3.0, math.nan, 4.0):  # the latest values go back up; the best so far does not
        line.on_trial_result(0, trials, trials[0], {"value_loss": v})
    text = line.sweep_line(trials)
    assert "best value_loss so far (min) 2 " in text and "trials 1/3 done, 1 running" in text
    trials.append(SimpleNamespace(trial_id="c", status="RUNNING", config={}, last_result={}))
    line.on_trial_complete(0, trials, trials[2])  # Tune marks it TERMINATED only after the callbacks
    assert "trials 2/3 done, 1 running |" in line.sweep_line(trials)
    trials.append(SimpleNamespace(trial_id="d", status="PENDING"))  # its actors start
    assert "trials 2/3 done, 1 running, 1 starting |" in line.sweep_line(trials)
    monkeypatch.setattr(ray_session._Fit, "short_of_resources", True)  # what check_cluster found: no room for it yet
    assert "trials 2/3 done, 1 running, 1 waiting for resources |" in line.sweep_line(trials)


def test_a_line_per_finished_trial_with_its_values_metric_steps_and_why(capsys, tmp_path):
    from types import SimpleNamespace

    from rlsweep.tuning.progress import ProgressLine

    stop = TrialStopper(StopConfig(target_return=475, env_steps=10_000))
    line = ProgressLine(sweep_trials=2, metric="eval_return_mean", searched=["ppo.lr"], stop_reason=stop.reason)
    done = SimpleNamespace(trial_id="ab_00000", experiment_tag="1_lr=0.000312345", status="TERMINATED", config={"ppo": {"lr": 0.000312345}},
                           last_result={"eval_return_mean": 480.0, "env_steps": 12288})
    line.on_trial_complete(0, [done], done)
    (tmp_path / "error.txt").write_text("Traceback ...\nValueError: the env broke\n")
    failed = SimpleNamespace(trial_id="ab_00001", experiment_tag="2_lr=0.1", status="ERROR", config={"ppo": {"lr": 0.1}},
                             last_result={"env_steps": 512}, error_file=str(tmp_path / "error.txt"))
    line.on_trial_error(0, [done, failed], failed)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "trial 001 lr=0.000312 | eval_return_mean 480 | 12,288 env steps | reached target return 475"
    assert err[-1] == "trial 002 lr=0.1 | eval_return_mean nan | 512 env steps | failed: ValueError: the env broke"
