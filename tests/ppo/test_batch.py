"""Rollouts to a training batch: only valid steps are kept, workers in order, GAE per worker."""

import numpy as np

from rlsweep.ppo.batch import Rollout, explained_variance, to_train_batch
from rlsweep.ppo.gae import compute_gae


def rollout(worker, T=4, N=2, invalid=()):
    """A rollout whose observations encode (worker, t, env) so that the batch order can be read back."""
    t, n = np.meshgrid(np.arange(T), np.arange(N), indexing="ij")
    obs = np.stack([np.full((T, N), worker), t, n], axis=-1).astype(np.float32)
    valid = np.ones((T, N), bool)
    for (ti, ni) in invalid:
        valid[ti, ni] = False
    rng = np.random.default_rng(worker)
    return Rollout(
        obs=obs, actions=np.zeros((T, N), np.int64), logp=np.zeros((T, N), np.float32),
        values=rng.normal(size=(T, N)).astype(np.float32), rewards=rng.normal(size=(T, N)).astype(np.float32),
        terminated=np.zeros((T, N), bool), truncated=np.zeros((T, N), bool), valid=valid,
        last_value=np.zeros(N, np.float32), episode_returns=[], episode_lengths=[], raw_obs=None, pid=0,
    )


def test_invalid_steps_are_dropped_and_workers_keep_their_order():
    a, b = rollout(0, invalid=[(1, 0), (3, 1)]), rollout(1)
    batch = to_train_batch([a, b], gamma=0.9, lam=0.8)
    assert len(batch.obs) == 8 - 2 + 8
    assert not any((row == [0, 1, 0]).all() or (row == [0, 3, 1]).all() for row in batch.obs)
    workers = batch.obs[:, 0]
    assert (workers[:6] == 0).all() and (workers[6:] == 1).all()
    # within a worker: time-major order, as the rollout arrays are laid out
    assert batch.obs[:6, 1].tolist() == [0, 0, 1, 2, 2, 3]


def test_advantages_are_each_workers_own_gae():
    a, b = rollout(0, invalid=[(2, 1)]), rollout(1)
    batch = to_train_batch([a, b], gamma=0.95, lam=0.9)
    parts = []
    for r in (a, b):
        adv, ret = compute_gae(r.rewards, r.values, r.terminated, r.truncated, r.valid, r.last_value, 0.95, 0.9)
        parts.append((adv[r.valid], ret[r.valid]))
    np.testing.assert_allclose(batch.advantages, np.concatenate([p[0] for p in parts]))
    np.testing.assert_allclose(batch.returns, np.concatenate([p[1] for p in parts]))
    np.testing.assert_allclose(batch.returns - batch.advantages, batch.values, rtol=1e-6, atol=1e-6)


def test_explained_variance():
    returns = np.array([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(np.full(4, returns.mean()), returns) == 0.0
    assert np.isnan(explained_variance(returns, np.ones(4)))
