"""GAE against hand-computed values, including truncation vs termination and autoreset steps."""

import numpy as np
import pytest

from rlsweep.ppo.gae import compute_gae

G, L = 0.9, 0.8


def col(*xs, dtype=np.float32):
    return np.asarray(xs, dtype=dtype)[:, None]  # (T, 1): one env


def gae(rewards, values, terminated, truncated, valid, last_value, gamma=G, lam=L):
    return compute_gae(
        col(*rewards), col(*values), col(*terminated, dtype=bool), col(*truncated, dtype=bool),
        col(*valid, dtype=bool), np.asarray([last_value], np.float32), gamma, lam,
    )


def test_no_episode_end_bootstraps_last_value():
    adv, ret = gae([1, 1, 1], [0.5, 0.4, 0.3], [0, 0, 0], [0, 0, 0], [1, 1, 1], 0.2)
    # delta_t = r + g*V(t+1) - V(t): 0.86, 0.87, 0.88;  A_t = delta_t + g*l*A_{t+1}
    np.testing.assert_allclose(adv[:, 0], [1.942592, 1.5036, 0.88], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], adv[:, 0] + [0.5, 0.4, 0.3], rtol=1e-6)


def test_termination_is_not_bootstrapped_and_autoreset_step_is_skipped():
    # t=1 terminates; t=2 is the autoreset step (its value is V(final obs) = 0.9, unused here).
    adv, ret = gae([1, 1, 0, 1], [0.5, 0.4, 0.9, 0.3], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], 0.2)
    np.testing.assert_allclose(adv[:, 0], [0.86 + 0.72 * 0.6, 0.6, 0.0, 0.88], rtol=1e-6)
    assert ret[2, 0] == 0.0


def test_truncation_bootstraps_the_final_observation_value():
    # Same, but t=1 is truncated: bootstrap from V(final obs) = value recorded at the autoreset step.
    adv, _ = gae([1, 1, 0, 1], [0.5, 0.4, 0.9, 0.3], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1], 0.2)
    np.testing.assert_allclose(adv[:, 0], [0.86 + 0.72 * 1.41, 1.41, 0.0, 0.88], rtol=1e-6)


@pytest.mark.parametrize("terminated,expected_last", [(True, 0.6), (False, 1.23)])
def test_episode_end_on_the_last_step(terminated, expected_last):
    adv, _ = gae([1, 1], [0.5, 0.4], [0, terminated], [0, not terminated], [1, 1], 0.7)
    np.testing.assert_allclose(adv[:, 0], [0.86 + 0.72 * expected_last, expected_last], rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("lam", [0.0, 0.8, 1.0])
def test_infinite_horizon_truncation(gamma, lam):
    """Reward 1 forever and the exact value 1/(1-gamma): with truncation bootstrapped every
    advantage is 0; treating the cut as a termination would make it negative."""
    v = 1.0 / (1.0 - gamma)
    T = 12
    rewards = np.ones((T, 2), np.float32)
    values = np.full((T, 2), v, np.float32)
    truncated = np.zeros((T, 2), bool)
    valid = np.ones((T, 2), bool)
    truncated[4, 0] = truncated[10, 1] = True
    valid[5, 0] = valid[11, 1] = False
    rewards[5, 0] = rewards[11, 1] = 0.0
    adv, ret = compute_gae(rewards, values, np.zeros_like(truncated), truncated, valid,
                           np.full(2, v, np.float32), gamma, lam)
    np.testing.assert_allclose(adv, 0.0, atol=1e-4 * v)
    np.testing.assert_allclose(ret[valid], v, rtol=1e-5)

    adv_wrong, _ = compute_gae(rewards, values, truncated, np.zeros_like(truncated), valid,
                               np.full(2, v, np.float32), gamma, lam)
    assert adv_wrong[4, 0] == pytest.approx(1.0 - v, rel=1e-5)


def test_multiple_envs_are_independent():
    rng = np.random.default_rng(0)
    T, N = 7, 3
    r, v = rng.normal(size=(T, N)).astype(np.float32), rng.normal(size=(T, N)).astype(np.float32)
    term = rng.random((T, N)) < 0.2
    valid = np.ones((T, N), bool)
    valid[1:] = ~term[:-1]
    last = rng.normal(size=N).astype(np.float32)
    adv, _ = compute_gae(r, v, term, np.zeros_like(term), valid, last, G, L)
    for i in range(N):
        one, _ = compute_gae(r[:, i:i + 1], v[:, i:i + 1], term[:, i:i + 1], np.zeros((T, 1), bool),
                             valid[:, i:i + 1], last[i:i + 1], G, L)
        np.testing.assert_allclose(adv[:, i], one[:, 0], rtol=1e-6)
