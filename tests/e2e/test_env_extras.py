"""Environments from the optional extras: MuJoCo and Box2D install, run, fail clearly when missing,
and keep MuJoCo's side file and noise out of the user's tree and terminal."""

import logging
import math
import subprocess
import sys

import numpy as np
import pytest

from rlsweep.config import EnvConfig
from rlsweep.envs import make_vector_env, space_info
from tests.conftest import ROOT, cli_env, printed, rlsweep


@pytest.mark.parametrize("env_id, module, extra", [("Hopper-v5", "mujoco", "mujoco"),
                                                   ("LunarLander-v3", "Box2D", "box2d"),
                                                   ("ALE/Breakout-v5", "ale_py", "atari"),
                                                   ("ALE/Breakout-v5, preset: atari", "ale_py", "atari")])
def test_a_missing_env_package_is_one_line_naming_the_extra(tmp_path, env_id, module, extra):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"name: extras\nenv: {{id: {env_id}}}\nstop: {{env_steps: 1000}}\n"
                   f"results_dir: {tmp_path / 'results'}\ntracking: {{local_dir: {tmp_path}}}\n")
    # the package made unimportable, as on a machine without it (gymnasium's own import path runs)
    code = (f"import sys; sys.modules[{module!r}] = None; from rlsweep.cli import main; "
            f"sys.exit(main(['train', {str(exp)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env=cli_env())
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(exp) in lines[0] and f"pip install 'rlsweep[{extra}]'" in lines[0], lines
    assert module in lines[0] and "gymnasium[" not in lines[0]  # not gymnasium's hint (box2d-py needs swig)
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_installed_extras_build_their_envs():
    assert space_info(EnvConfig(id="Hopper-v5")).act_dim == 3
    assert space_info(EnvConfig(id="LunarLander-v3")).act_dim == 4
    assert space_info(EnvConfig(id="ALE/Breakout-v5")).obs_shape == (210, 160, 3)  # the raw screen: a cnn's too


def test_mujoco_warnings_go_to_the_log_once_and_no_file_is_written(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    env = make_vector_env(EnvConfig(id="Hopper-v5"), 2)
    env.reset(seed=0)
    with caplog.at_level(logging.WARNING, logger="rlsweep.envs"):
        for _ in range(3):  # an unstable simulation: MuJoCo warns at every step
            for sub in env.envs:
                sub.unwrapped.data.qvel[:] = 1e30
            env.step(np.zeros((2, 3), dtype=np.float32))
    env.close()
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MuJoCo:")]
    assert len(warned) == 1 and "unstable" in warned[0], warned
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


@pytest.mark.slow
def test_the_hopper_experiment_trains_on_a_rollout_actor(tmp_path):
    r = rlsweep("train", ROOT / "experiments/hopper_ppo.yaml", "--set", "stop.env_steps=2048",
                "--set", "evaluation.interval=1", "--set", f"results_dir={tmp_path / 'results'}",
                "--set", f"tracking.local_dir={tmp_path}", timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ret = float(next(x.split()[1] for x in r.stdout.splitlines() if x.strip().startswith("eval_return_mean")))
    assert math.isfinite(ret) and ret > 0
    assert "Deprecat" not in r.stderr and "MUJOCO" not in r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db", "mlflow.db.lock", "results"]


@pytest.mark.slow
def test_the_breakout_experiment_trains_from_pixels_on_an_actor_and_its_checkpoint_plays(tmp_path):
    """The shipped Atari experiment, briefly: frames sampled on a rollout actor, the cnn updated,
    evaluated on whole games; `evaluate` plays the checkpoint's policy and reports the games' score."""
    r = rlsweep("train", ROOT / "experiments/breakout_ppo.yaml", "--set", "stop.env_steps=2048",
                "--set", "rollouts.num_rollout_workers=1", "--set", "evaluation.interval=1",
                "--set", "evaluation.episodes=2", "--set", "env.max_episode_steps=400",
                "--set", f"results_dir={tmp_path / 'results'}", "--set", f"tracking.local_dir={tmp_path}",
                timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert printed(r.stdout, "env_steps") == 2048 and printed(r.stdout, "eval_return_mean") >= 0
    ckpt = next(line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("checkpoint:"))
    e = rlsweep("evaluate", ckpt, "--episodes", "2", timeout=300, cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    assert printed(e.stdout, "eval_return_mean") >= 0 and printed(e.stdout, "eval_length_mean") > 0
