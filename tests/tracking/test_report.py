"""The sweep's summary: the best trial's config as an experiment file that `rlsweep train` runs as is."""

import yaml

from rlsweep.config import validate
from rlsweep.tracking.report import best_config_yaml
from tests.conftest import small_config


def test_the_best_config_is_a_runnable_experiment_beside_its_trials():
    row = {"trial_id": "ab_00003", "number": "004", "eval_return_mean": 480.0,
           "config": small_config(ppo={"lr": 0.00123})}
    text = best_config_yaml(row, "cartpole-20261201", "eval_return_mean")
    assert text.startswith("# best trial 004 (trial id ab_00003) of sweep cartpole-20261201: eval_return_mean = 480.0\n")
    exp = validate(yaml.safe_load(text))
    assert exp.name == "cartpole-20261201-best" and exp.ppo.lr == 0.00123
    assert exp.tracking.experiment == "test"  # its runs go to the sweep's MLflow experiment, named apart


def test_the_learning_curves_are_each_trials_evaluation_return_named_by_number_best_first(store):
    """learning_curves.png draws every ranked trial's deterministic evaluation return against env steps,
    labelled by its number and score, the best first (and the parent's description names it)."""
    from rlsweep.tracking.report import answer, curve_series

    tracker = store.tracker()
    rows = []
    for number, score, curve in (("002", 300.0, [(100, 50.0), (200, 300.0)]), ("001", 120.0, [(100, 20.0), (200, 120.0)])):
        run = tracker.start(f"{number} lr=0.1", {})
        for step, value in curve:
            tracker.log_metrics(run, {"eval_return_mean": value, "episode_return_mean": value + 1}, step=step)
        rows.append({"trial": number, "trial_id": f"t_{number}", "mlflow_run_id": run, "eval_return_mean": score,
                     "env_steps": 200, "config": small_config(ppo={"lr": 0.1})})
    rows.append({"trial": "003", "trial_id": "t_003", "mlflow_run_id": None, "eval_return_mean": 10.0,
                 "config": small_config()})  # no run: no curve
    series = curve_series(tracker, rows, "eval_return_mean")
    assert series == [("002 (eval_return_mean 300)", [100, 200], [50.0, 300.0]),
                      ("001 (eval_return_mean 120)", [100, 200], [20.0, 120.0])]
    text = answer(rows, "eval_return_mean", ["ppo.lr"], "s")
    assert text.startswith("**Winner: trial 002 lr=0.1**, eval_return_mean 300 in the search.")
    assert "It leads the runner-up, trial 001 (120), by 180 (search scores)." in text


def test_the_winners_video_goes_to_the_parent_or_its_reason_does(store, tmp_path):
    """winner.gif on the parent run, recorded in a child process from the winner's checkpoint and
    described by the `rlsweep.video` tag; an env that cannot render leaves the reason there instead."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from rlsweep.tracking.report import VIDEO, winner_video
    from rlsweep.tracking.runs import TAG_VIDEO
    from tests.engine.test_video import trained_checkpoint

    tracker = store.tracker()
    client = MlflowClient(store.uri)
    filmed = tracker.start("filmed", {})
    with winner_video(tracker, filmed, str(trained_checkpoint(tmp_path / "a"))):  # filmed meanwhile
        assert client.list_artifacts(filmed) == []
    assert [a.path for a in client.list_artifacts(filmed)] == [VIDEO]
    with Image.open(client.download_artifacts(filmed, VIDEO, str(tmp_path))) as im:
        frames = im.n_frames
    assert tracker.tags(filmed)[TAG_VIDEO].startswith(f"{VIDEO}: ({frames} frames, ")

    blind = tracker.start("blind", {})
    with winner_video(tracker, blind, str(trained_checkpoint(tmp_path / "b", "tests.faulty_envs:NoRenderCartPole"))):
        pass
    assert client.list_artifacts(blind) == []
    assert tracker.tags(blind)[TAG_VIDEO] == "no video: the env cannot render: it has no rgb_array render mode"
