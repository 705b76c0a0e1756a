"""Sampler and Evaluator on real gymnasium envs, in-process (no Ray)."""

import numpy as np
import pytest

from rlsweep.config import validate
from rlsweep.engine.rollout import Evaluator, Sampler
from rlsweep.envs import space_info
from tests.conftest import numpy_weights, small_config


def setup(env_id="CartPole-v1", **sections):
    cfg = validate(small_config(env_id=env_id, workers=0, **sections))
    space = space_info(cfg.env)
    return cfg, numpy_weights(space.obs_dim, space.act_dim, discrete=space.discrete)


def test_sample_shapes_and_dtypes():
    cfg, w = setup()
    s = Sampler(cfg, 0)
    r = s.sample(w, None)
    T, N = cfg.rollout_length, cfg.rollouts.num_envs_per_worker
    assert T * N == cfg.ppo.train_batch_size
    for name in ("obs",):
        assert getattr(r, name).shape == (T, N, 4)
    for name in ("actions", "logp", "values", "rewards", "terminated", "truncated", "valid"):
        assert getattr(r, name).shape == (T, N), name
    assert r.actions.dtype == np.int64 and r.valid.dtype == bool and r.last_value.shape == (N,)
    assert r.raw_obs is None
    s.close()


def test_box_actions_and_raw_observations():
    cfg, w = setup("Pendulum-v1", env={"vectorization": "sync"}, policy={"normalize_observations": True})
    from rlsweep.ppo.normalization import RunningMeanStd

    s = Sampler(cfg, 0)
    r = s.sample(w, RunningMeanStd.zeros(3))
    T, N = cfg.rollout_length, cfg.rollouts.num_envs_per_worker
    assert r.actions.shape == (T, N, 1) and r.actions.dtype == np.float32
    assert r.raw_obs.shape == (T * N, 3)
    s.close()


def test_episode_accounting_adds_up():
    """Every valid step's reward lands in exactly one episode; the step after an episode ends is the
    autoreset step and is invalid; on CartPole (reward 1 per step) an episode's return is its length."""
    cfg, w = setup(ppo={"train_batch_size": 512, "minibatch_size": 64})
    s = Sampler(cfg, 0)
    before = s.ep_return.copy()
    r = s.sample(w, None)
    assert len(r.episode_returns) > 0
    assert r.episode_returns == [float(x) for x in r.episode_lengths]
    total_valid = float(r.rewards[r.valid].sum())
    assert total_valid == pytest.approx(sum(r.episode_returns) + s.ep_return.sum() - before.sum())
    done = r.terminated | r.truncated
    assert (~r.valid[1:] == done[:-1]).all()
    s.close()


def test_sampler_state_round_trip_continues_exactly():
    cfg, w = setup()
    a = Sampler(cfg, 0)
    a.sample(w, None)
    state = a.get_state()
    expected = a.sample(w, None)

    b = Sampler(cfg, 0)
    assert b.set_state(state, restart_seed=1) is True
    got = b.sample(w, None)
    for x, y in zip(expected, got, strict=True):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
    assert expected.episode_returns == got.episode_returns
    a.close()
    b.close()


def test_samplers_differ_by_worker_index():
    cfg, w = setup()
    a, b = Sampler(cfg, 0), Sampler(cfg, 1)
    assert not np.array_equal(a.sample(w, None).obs, b.sample(w, None).obs)
    a.close()
    b.close()


def test_evaluator_is_repeatable_per_iteration():
    cfg, w = setup(evaluation={"episodes": 4})
    e = Evaluator(cfg)
    first, again, other = e.evaluate(w, None, 1), e.evaluate(w, None, 1), e.evaluate(w, None, 2)
    assert first == again
    assert set(first) == {"eval_return_mean", "eval_return_std", "eval_length_mean"}
    assert first["eval_return_mean"] == first["eval_length_mean"]  # CartPole: return = length
    assert first != other
    e.close()
