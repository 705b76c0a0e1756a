"""The numpy acting policy and the torch network compute the same distribution and values."""

import numpy as np
import pytest
import torch

from rlsweep.config import PolicyConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo.networks import ActorCritic
from rlsweep.ppo.policy import NumpyPolicy

DISCRETE = SpaceInfo(obs_dim=4, discrete=True, act_dim=3)
BOX = SpaceInfo(obs_dim=3, discrete=False, act_dim=2, act_low=-np.ones(2, np.float32), act_high=np.ones(2, np.float32))


@pytest.mark.parametrize("seeds", [[0], [0, 7, 3]], ids=["one-agent", "three-agents"])
@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_forward_matches_torch(space, activation, seeds):
    cfg = PolicyConfig(hidden_sizes=[16, 8], activation=activation, log_std_init=-0.3)
    net = ActorCritic(space, cfg, seeds)
    k = len(seeds)
    # perturb the last actor layer so the distribution is far from uniform
    with torch.no_grad():
        net.pi_w.normal_()
    pol = NumpyPolicy(space, PolicyConfig(activation=activation))
    pol.load(net.export_weights())
    obs = np.random.default_rng(0).normal(size=(k, 64, space.obs_dim)).astype(np.float32)
    actions, logp, values = pol.act(obs, [np.random.default_rng(1 + i) for i in range(k)])
    assert logp.shape == values.shape == (k, 64)
    assert actions.shape == ((k, 64) if space.discrete else (k, 64, space.act_dim))
    t_logp, _, t_values = net.evaluate(torch.as_tensor(obs), torch.as_tensor(actions))
    np.testing.assert_allclose(logp, t_logp.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(values, t_values.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(pol.value(obs), net.value(torch.as_tensor(obs)).detach().numpy(), atol=1e-5)


def test_categorical_sampling_follows_the_probabilities():
    pol = NumpyPolicy(DISCRETE, PolicyConfig())
    # zero hidden weights, output bias = log-probs of [0.2, 0.3, 0.5]
    probs = np.array([0.2, 0.3, 0.5], np.float32)
    pol.load({
        "actor": [np.zeros((1, 4, 4), np.float32), np.zeros((1, 1, 4), np.float32), np.zeros((1, 4, 3), np.float32),
                  np.log(probs).reshape(1, 1, 3)],
        "critic": [np.zeros((1, 4, 4), np.float32), np.zeros((1, 1, 4), np.float32), np.zeros((1, 4, 1), np.float32),
                   np.zeros((1, 1, 1), np.float32)],
    })
    obs = np.zeros((1, 20000, 4), np.float32)
    a, logp, _ = pol.act(obs, [np.random.default_rng(0)])
    assert a.shape == logp.shape == (1, 20000)
    np.testing.assert_allclose(np.bincount(a[0], minlength=3) / a.size, probs, atol=0.015)
    np.testing.assert_allclose(logp, np.log(probs)[a], atol=1e-6)
    assert pol.greedy(obs[:, :1]).tolist() == [[2]]


def test_each_agent_draws_from_its_own_rng():
    """Agent k's actions depend on its weights and `rngs[k]` alone: the same as a one-agent policy's."""
    net = ActorCritic(DISCRETE, PolicyConfig(hidden_sizes=[8]), [4, 5])
    with torch.no_grad():
        net.pi_w.normal_()
    both = NumpyPolicy(DISCRETE, PolicyConfig())
    both.load(net.export_weights())
    obs = np.random.default_rng(0).normal(size=(2, 100, 4)).astype(np.float32)
    a, logp, values = both.act(obs, [np.random.default_rng(10), np.random.default_rng(11)])
    for k in range(2):
        alone = NumpyPolicy(DISCRETE, PolicyConfig())
        alone.load({key: [w[k : k + 1] for w in ws] for key, ws in net.export_weights().items()})
        ak, lk, vk = alone.act(obs[k : k + 1], [np.random.default_rng(10 + k)])
        np.testing.assert_array_equal(a[k : k + 1], ak)
        np.testing.assert_allclose(logp[k : k + 1], lk, rtol=1e-6)
        np.testing.assert_allclose(values[k : k + 1], vk, rtol=1e-6)


def test_box_actions_are_clipped_only_at_the_env():
    pol = NumpyPolicy(BOX, PolicyConfig())
    raw = np.array([[3.0, -0.5]], np.float32)
    assert pol.to_env(raw).tolist() == [[1.0, -0.5]]
    assert raw.tolist() == [[3.0, -0.5]]


def test_orthogonal_init_and_small_policy_head():
    net = ActorCritic(DISCRETE, PolicyConfig(hidden_sizes=[32, 32]), [0])
    assert net.hidden_w[0].shape == (2, 4, 32) and net.pi_w.shape == (1, 32, 3) and net.v_w.shape == (1, 32, 1)
    for i in (0, 1):  # the actor's and the critic's hidden layers
        w_in, w_hidden = net.hidden_w[0][i].detach(), net.hidden_w[1][i].detach()  # (4, 32), (32, 32)
        np.testing.assert_allclose((w_in @ w_in.T).numpy(), 2.0 * np.eye(4), atol=1e-4)  # gain sqrt(2)
        np.testing.assert_allclose((w_hidden.T @ w_hidden).numpy(), 2.0 * np.eye(32), atol=1e-4)
    assert not torch.equal(net.hidden_w[1][0], net.hidden_w[1][1])  # two networks, not one
    assert net.pi_w.abs().max() < 0.05


def test_each_agent_is_initialised_from_its_own_seed_alone():
    """Agent k of a stacked network is the one-agent network on seeds[k], whatever its neighbours."""
    cfg = PolicyConfig(hidden_sizes=[16, 8], log_std_init=-0.3)
    stacked = ActorCritic(BOX, cfg, [5, 6, 7])
    for k, seed in enumerate([5, 6, 7]):
        alone = ActorCritic(BOX, cfg, [seed])
        for (name, p), q in zip(stacked.named_parameters(), alone.parameters(), strict=True):
            rows = 2 if name.startswith("hidden_") else 1
            assert torch.equal(p[rows * k : rows * (k + 1)], q), (name, k)
    assert not torch.equal(stacked.pi_w[0], stacked.pi_w[1])  # the seeds differ, so do the agents
