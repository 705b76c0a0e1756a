"""The lines a sweep prints: the live line and one line per finished trial."""

import math

from rlsweep.config import StopConfig
from rlsweep.tuning.stopper import TrialStopper


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
