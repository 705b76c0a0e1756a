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
        assert getattr(r, name).shape == (T, 1, N, 4)
    for name in ("actions", "logp", "values", "rewards", "terminated", "truncated", "valid"):
        assert getattr(r, name).shape == (T, 1, N), name
    assert r.actions.dtype == np.int64 and r.valid.dtype == bool and r.last_value.shape == (1, N)
    assert r.raw_obs is None and len(r.episode_returns) == len(r.episode_lengths) == 1
    s.close()


def test_box_actions_and_raw_observations():
    cfg, w = setup("Pendulum-v1", env={"vectorization": "sync"}, policy={"normalize_observations": True})
    from rlsweep.ppo.normalization import RunningMeanStd

    s = Sampler(cfg, 0)
    r = s.sample(w, [RunningMeanStd.zeros(3)])
    T, N = cfg.rollout_length, cfg.rollouts.num_envs_per_worker
    assert r.actions.shape == (T, 1, N, 1) and r.actions.dtype == np.float32
    assert r.raw_obs.shape == (1, T * N, 3)
    s.close()


def test_episode_accounting_adds_up():
    """Every valid step's reward lands in exactly one episode; the step after an episode ends is the
    autoreset step and is invalid; on CartPole (reward 1 per step) an episode's return is its length."""
    cfg, w = setup(ppo={"train_batch_size": 512, "minibatch_size": 64})
    s = Sampler(cfg, 0)
    before = s.ep_return.copy()
    r = s.sample(w, None)
    [returns], [lengths] = r.episode_returns, r.episode_lengths  # the one agent's
    assert len(returns) > 0
    assert returns == [float(x) for x in lengths]
    total_valid = float(r.rewards[r.valid].sum())
    assert total_valid == pytest.approx(sum(returns) + s.ep_return.sum() - before.sum())
    done = r.terminated | r.truncated
    assert (~r.valid[1:] == done[:-1]).all()
    s.close()


def assert_continues_exactly(cfg, w, a, state):
    """A fresh sampler set to `state` samples what `a` (whose state it is) samples next."""
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


def test_sampler_state_round_trip_continues_exactly():
    cfg, w = setup()
    a = Sampler(cfg, 0)
    a.sample(w, None)
    state = a.get_state()
    assert_continues_exactly(cfg, w, a, state)


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
    assert all(len(v) == 1 for v in first.values())  # one value per agent
    assert first["eval_return_mean"] == first["eval_length_mean"]  # CartPole: return = length
    assert first != other
    e.close()


def agent(w, k):
    """Agent k's weights alone: a one-agent `policy.Weights`."""
    return {key: [x[k : k + 1] for x in layers] for key, layers in w.items()}


@pytest.mark.parametrize("env_id, sections", [
    ("CartPole-v1", {}),
    ("Pendulum-v1", {"env": {"vectorization": "sync"}, "policy": {"normalize_observations": True}}),
])
def test_a_k_agent_sampler_samples_as_k_one_seed_samplers(env_id, sections):
    """Agent k of a sampler of 3 agents (seeds s, s+1, s+2) sees the envs, draws the actions and ends
    the episodes that a one-agent sampler on seed s+k does, call after call."""
    from rlsweep.ppo.normalization import RunningMeanStd

    cfg = validate(small_config(env_id=env_id, workers=0, seed=20, sweep={"seeds_per_trial": 3}, **sections))
    space = space_info(cfg.env)
    w = numpy_weights(space.obs_dim, space.act_dim, discrete=space.discrete, agents=3)
    normalize = cfg.policy.normalize_observations
    stats = [RunningMeanStd(np.full(space.obs_dim, 0.1 * k), np.full(space.obs_dim, 2.0), 10.0) for k in range(3)]
    many = Sampler(cfg, 1)
    ones = [Sampler(cfg.model_copy(update={"seed": 20 + k, "sweep": cfg.sweep.model_copy(
        update={"seeds_per_trial": 1})}), 1) for k in range(3)]
    for _ in range(2):
        got = many.sample(w, stats if normalize else None)
        for k, one in enumerate(ones):
            want = one.sample(agent(w, k), [stats[k]] if normalize else None)
            for name in ("obs", "actions", "logp", "values", "rewards", "terminated", "truncated", "valid"):
                np.testing.assert_allclose(getattr(got, name)[:, k], getattr(want, name)[:, 0], rtol=1e-5, atol=1e-6,
                                           err_msg=name)
            np.testing.assert_allclose(got.last_value[k], want.last_value[0], rtol=1e-5, atol=1e-6)
            assert got.episode_returns[k] == pytest.approx(want.episode_returns[0], rel=1e-6)
            assert got.episode_lengths[k] == want.episode_lengths[0]
            if normalize:
                np.testing.assert_array_equal(got.raw_obs[k], want.raw_obs[0])
    for s in (many, *ones):
        s.close()


def test_a_k_agent_evaluator_evaluates_as_k_one_seed_evaluators():
    cfg = validate(small_config(workers=0, seed=20, sweep={"seeds_per_trial": 3}, evaluation={"episodes": 4}))
    w = numpy_weights(4, 2, agents=3)
    many = Evaluator(cfg)
    got = many.evaluate(w, None, 5)
    assert all(len(v) == 3 for v in got.values())
    for k in range(3):
        one = Evaluator(cfg.model_copy(update={"seed": 20 + k, "sweep": cfg.sweep.model_copy(
            update={"seeds_per_trial": 1})}))
        want = one.evaluate(agent(w, k), None, 5)
        one.close()
        assert {key: v[k] for key, v in got.items()} == {key: v[0] for key, v in want.items()}
    assert len(set(got["eval_return_mean"])) > 1  # the agents' policies and seeds differ
    many.close()


def test_a_k_agent_sampler_state_round_trip_continues_exactly():
    cfg, _ = setup(sweep={"seeds_per_trial": 3})
    w = numpy_weights(4, 2, agents=3)
    a = Sampler(cfg, 0)
    a.sample(w, None)
    state = a.get_state()
    assert len(state["envs"]) == len(state["rngs"]) == 3
    assert_continues_exactly(cfg, w, a, state)


def test_a_sampler_state_from_before_the_agent_axis_is_read():
    """The one-agent state layout of old checkpoints ("env", "rng", (N,) arrays) continues exactly."""
    from rlsweep.envs import decode_value, encode_value

    cfg, w = setup()
    a = Sampler(cfg, 0)
    a.sample(w, None)
    new = a.get_state()
    old = {"env": new["envs"][0], "rng": new["rngs"][0],
           **{key: encode_value(decode_value(new[key])[0]) for key in ("obs", "prev_done", "ep_return", "ep_length")}}
    assert_continues_exactly(cfg, w, a, old)
