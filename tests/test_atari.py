"""The Atari preset on real ALE games: what training learns from (a life's episode, clipped rewards)
against what is scored (whole games, unclipped), frames as uint8 across a Ray actor's boundary, and a
checkpoint that restores the learner exactly while its games start anew."""

import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rlsweep import metrics as M
from rlsweep.config import ConfigError, EnvConfig, validate
from rlsweep.engine import video
from rlsweep.envs import SCORE, SCORE_LENGTH, env_state, make_vector_env, space_info
from rlsweep.ppo import checkpoint
from rlsweep.tracking import model
from rlsweep.tuning.trainable import PPOTrainable
from tests.conftest import small_config

# Space Invaders: 3 lives, FIRE, and rewards of 5 to 30 per alien, so clipping shows
INVADERS = EnvConfig(id="ALE/SpaceInvaders-v5", preset="atari", kwargs={"repeat_action_probability": 0.0})


def play(training: bool, steps: int = 1500, n: int = 2, limit: int | None = None, seed: int = 7):
    """The same random action sequence on the same seeds: rewards, ends, lives and the scored games."""
    env = make_vector_env(INVADERS.model_copy(update={"max_episode_steps": limit}), n, training=training)
    obs, _ = env.reset(seed=seed)
    assert obs.shape == (n, 4, 84, 84) and obs.dtype == np.uint8
    assert env_state(env) is None  # the emulator's state is native: a restore starts new games
    rng = np.random.default_rng(0)
    rewards, ends, scores, lengths = [], [], [], []
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(rng.integers(0, 6, n))
        rewards.append(r)
        ends.append((term | trunc, info["lives"]))
        scored = ~np.isnan(info[SCORE])
        scores += info[SCORE][scored].tolist()
        lengths += info[SCORE_LENGTH][scored].tolist()
    env.close()
    return np.array(rewards), ends, scores, lengths


def test_training_ends_an_episode_at_each_lost_life_and_clips_while_games_are_scored_whole():
    train_rewards, train_ends, train_scores, train_lengths = play(training=True)
    eval_rewards, eval_ends, eval_scores, eval_lengths = play(training=False)
    assert set(np.unique(train_rewards)) <= {-1.0, 0.0, 1.0}  # clipped for learning
    assert eval_rewards.max() > 1  # the game's own points in evaluation
    # evaluation ends episodes only at a game's end; training at every lost life too
    assert all((lives[done] == 0).all() for done, lives in eval_ends)
    lives_lost = sum(int((done & (lives > 0)).sum()) for done, lives in train_ends)
    assert lives_lost >= 2 * len(eval_scores) > 0
    # the same games were played (the same actions, FIRE after a lost life in both): both report each
    # game's unclipped score and length, and evaluation's are its rewards summed
    assert train_scores == eval_scores and train_lengths == eval_lengths
    assert max(eval_scores) > 30


def test_a_game_cut_by_the_time_limit_on_a_lost_life_is_scored_alone():
    """ALE ends a game at the frame limit even on the step that loses a life: that game is scored then,
    not merged with the next (on seed 5 one does, at step 642)."""
    limit = 160
    train = play(training=True, steps=1000, limit=limit, seed=5)
    evaluation = play(training=False, steps=1000, limit=limit, seed=5)
    assert train[2] == evaluation[2] and train[3] == evaluation[3]
    assert len(train[3]) >= 2 * 1000 // limit - 2 and max(train[3]) <= limit


def test_bad_atari_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"env.preset.*'atari'"):
        validate(small_config() | {"env": {"id": "ALE/Pong-v5", "preset": "nes"}})
    with pytest.raises(ConfigError, match="atari needs an Atari game id such as ALE/Breakout-v5, not 'CartPole-v1'"):
        space_info(EnvConfig(id="CartPole-v1", preset="atari"))
    with pytest.raises(ConfigError, match="env.kwargs.*frameskip not taken with env.preset atari"):
        space_info(EnvConfig(id="ALE/Pong-v5", preset="atari", kwargs={"frameskip": 2}))
    info = space_info(EnvConfig(id="ALE/Pong-v5", preset="atari"))
    assert (info.obs_shape, info.obs_dtype, info.discrete, info.act_dim) == ((4, 84, 84), "uint8", True, 6)


def breakout(workers):
    return small_config(
        env_id="ALE/Breakout-v5", workers=workers, env={"preset": "atari", "max_episode_steps": 100},
        policy={"cnn_dense": 64}, ppo={"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1},
        rollouts={"num_envs_per_worker": 2}, evaluation={"interval": 1, "episodes": 1})


def test_frames_cross_to_the_learner_as_uint8_and_a_checkpoint_restores_the_learner(ray_local, tmp_path):
    config = breakout(workers=1)
    t = PPOTrainable(config=config)
    try:
        [rollout] = t.training.workers.sample(t.training.learner.weights(), None)  # from the actor's process
        assert rollout.pid != os.getpid() and rollout.obs.dtype == np.uint8
        assert rollout.obs.shape == (32, 1, 2, 4, 84, 84)
        first = t.step()
        path = t.save(str(tmp_path / "ckpt"))
        saved = t.training.learner.flat.clone()
    finally:
        t.stop()
    assert first[M.EVAL_RETURN_MEAN] >= 0 and first[M.ENV_STEPS] == 64
    restored = PPOTrainable(config=breakout(workers=0))  # (in-process sampling: no actors to start again)
    try:
        restored.restore(path)
        assert torch.equal(restored.training.learner.flat, saved)  # weights and their layout, exactly
        after = restored.step()
    finally:
        restored.stop()
    assert after[M.ENV_STEPS] == 128 and "restarted" in after[M.RESTORE_NOTE]
    # restoring into another network is refused in one line; settings of the mlp do not matter to a cnn
    with pytest.raises(ConfigError, match="checkpoint has a cnn policy, the experiment would build a mlp"):
        checkpoint.check(tmp_path / "ckpt", {**config, "policy": {**config["policy"], "encoder": "mlp"}})
    with pytest.raises(ConfigError, match="policy.cnn_dense=64, the experiment 512"):
        checkpoint.check(tmp_path / "ckpt", {**config, "policy": {**config["policy"], "cnn_dense": 512}})
    checkpoint.check(tmp_path / "ckpt", {**config, "policy": {**config["policy"], "hidden_sizes": [8]}})
    cfg, weights, stats = checkpoint.load_policy(tmp_path / "ckpt")
    assert cfg.env.preset == "atari" and stats is None and weights["trunk"][0].shape == (1, 8 * 8 * 4, 32)
    # its MLflow model takes frames as they come from the env, uint8 stacks, and acts on them
    folder = model.build(tmp_path / "ckpt", tmp_path / "model")
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert json.loads(mlmodel["signature"]["inputs"])[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 4, 84, 84]}
    frames = np.asarray(json.loads((folder / model.EXAMPLE).read_text())["inputs"], np.uint8)
    actions = model.Policy(folder / model.CHECKPOINT).predict(frames)
    assert actions.shape == (2,) and set(actions.tolist()) <= set(range(4))
    # a video of a game as the agent sees it (ALE's vector env renders nothing itself)
    clip = video.record(cfg, weights, stats, tmp_path / "breakout.gif", seed=1)
    with Image.open(clip.path) as gif:
        assert gif.n_frames > 10 and gif.size == (252, 252)
    assert clip.steps > 10 and 10_000 < clip.size_bytes < 5_000_000
