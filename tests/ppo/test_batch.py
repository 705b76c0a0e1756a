"""Rollouts to a training batch: only valid steps are kept, workers in order, GAE per worker."""

import numpy as np

from rlsweep.ppo.batch import Rollout, explained_variance, to_train_batch
from rlsweep.ppo.gae import compute_gae


def rollout(worker, T=4, N=2, invalid=(), K=1):
    """A rollout of K agents whose observations encode (worker, t, env, agent) so that the batch
    order can be read back. `invalid`: (t, env) or (t, env, agent) steps marked invalid (agent 0 by
    default)."""
    t, k, n = np.meshgrid(np.arange(T), np.arange(K), np.arange(N), indexing="ij")
    obs = np.stack([np.full((T, K, N), worker), t, n, k], axis=-1).astype(np.float32)
    valid = np.ones((T, K, N), bool)
    for step in invalid:
        ti, ni, ki = (*step, 0)[:3]
        valid[ti, ki, ni] = False
    rng = np.random.default_rng(worker)
    return Rollout(
        obs=obs, actions=np.zeros((T, K, N), np.int64), logp=np.zeros((T, K, N), np.float32),
        values=rng.normal(size=(T, K, N)).astype(np.float32), rewards=rng.normal(size=(T, K, N)).astype(np.float32),
        terminated=np.zeros((T, K, N), bool), truncated=np.zeros((T, K, N), bool), valid=valid,
        last_value=np.zeros((K, N), np.float32), episode_returns=[[] for _ in range(K)],
        episode_lengths=[[] for _ in range(K)], raw_obs=None, pid=0,
    )


def test_invalid_steps_are_dropped_and_workers_keep_their_order():
    a, b = rollout(0, invalid=[(1, 0), (3, 1)]), rollout(1)
    batch = to_train_batch([a, b], gamma=0.9, lam=0.8)
    assert batch.obs.shape[:2] == (1, 8 - 2 + 8) and batch.counts.tolist() == [8 - 2 + 8]
    obs = batch.obs[0]
    assert not any((row[:3] == [0, 1, 0]).all() or (row[:3] == [0, 3, 1]).all() for row in obs)
    workers = obs[:, 0]
    assert (workers[:6] == 0).all() and (workers[6:] == 1).all()
    # within a worker: time-major order, as the rollout arrays are laid out
    assert obs[:6, 1].tolist() == [0, 0, 1, 2, 2, 3]


def test_advantages_are_each_workers_own_gae():
    a, b = rollout(0, invalid=[(2, 1)]), rollout(1)
    batch = to_train_batch([a, b], gamma=0.95, lam=0.9)
    parts = []
    for r in (a, b):
        adv, ret = compute_gae(r.rewards, r.values, r.terminated, r.truncated, r.valid, r.last_value, 0.95, 0.9)
        parts.append((adv[r.valid], ret[r.valid]))
    np.testing.assert_allclose(batch.advantages[0], np.concatenate([p[0] for p in parts]))
    np.testing.assert_allclose(batch.returns[0], np.concatenate([p[1] for p in parts]))
    np.testing.assert_allclose(batch.returns - batch.advantages, batch.values, rtol=1e-6, atol=1e-6)


def test_each_agent_keeps_its_own_valid_steps_padded_to_the_longest():
    """With K agents, agent k's row holds its valid steps only (in worker, then time-major order), its
    count in `counts`, and its first sample repeated after them; its GAE is the one of its own steps."""
    a = rollout(0, K=3, invalid=[(1, 0, 0), (3, 1, 2), (2, 0, 2)])
    b = rollout(1, K=3, invalid=[(0, 1, 2)])
    batch = to_train_batch([a, b], gamma=0.95, lam=0.9)
    assert batch.counts.tolist() == [15, 16, 13]
    assert batch.obs.shape == (3, 16, 4) and batch.advantages.shape == (3, 16)
    for k, n in enumerate(batch.counts):
        assert (batch.obs[k, :n, 3] == k).all()  # only this agent's steps
        assert (batch.obs[k, n:] == batch.obs[k, 0]).all() and (batch.advantages[k, n:] == batch.advantages[k, 0]).all()
        adv = [compute_gae(r.rewards[:, k], r.values[:, k], r.terminated[:, k], r.truncated[:, k], r.valid[:, k],
                           r.last_value[k], 0.95, 0.9)[0][r.valid[:, k]] for r in (a, b)]
        np.testing.assert_allclose(batch.advantages[k, :n], np.concatenate(adv), rtol=1e-6)
        workers = batch.obs[k, :n, 0]
        assert (np.diff(workers) >= 0).all()


def test_explained_variance():
    returns = np.array([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(np.full(4, returns.mean()), returns) == 0.0
    assert np.isnan(explained_variance(returns, np.ones(4)))
