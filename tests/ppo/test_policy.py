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


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_forward_matches_torch(space, activation):
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden_sizes=[16, 8], activation=activation, log_std_init=-0.3)
    net = ActorCritic(space, cfg)
    # perturb the last actor layer so the distribution is far from uniform
    with torch.no_grad():
        net.pi_head.weight.normal_()
    pol = NumpyPolicy(space, activation)
    pol.load(net.export_weights())
    obs = np.random.default_rng(0).normal(size=(64, space.obs_dim)).astype(np.float32)
    actions, logp, values = pol.act(obs, np.random.default_rng(1))
    t_logp, _, t_values = net.evaluate(torch.as_tensor(obs), torch.as_tensor(actions))
    np.testing.assert_allclose(logp, t_logp.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(values, t_values.detach().numpy(), atol=1e-5)


def test_categorical_sampling_follows_the_probabilities():
    pol = NumpyPolicy(DISCRETE, "tanh")
    # zero hidden weights, output bias = log-probs of [0.2, 0.3, 0.5]
    probs = np.array([0.2, 0.3, 0.5], np.float32)
    pol.load({
        "actor": [np.zeros((4, 4), np.float32), np.zeros(4, np.float32), np.zeros((3, 4), np.float32), np.log(probs)],
        "critic": [np.zeros((4, 4), np.float32), np.zeros(4, np.float32), np.zeros((1, 4), np.float32), np.zeros(1, np.float32)],
    })
    obs = np.zeros((20000, 4), np.float32)
    a, logp, _ = pol.act(obs, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(a, minlength=3) / len(a), probs, atol=0.015)
    np.testing.assert_allclose(logp, np.log(probs)[a], atol=1e-6)
    assert pol.greedy(obs[:1]).tolist() == [2]


def test_box_actions_are_clipped_only_at_the_env():
    pol = NumpyPolicy(BOX, "tanh")
    raw = np.array([[3.0, -0.5]], np.float32)
    assert pol.to_env(raw).tolist() == [[1.0, -0.5]]
    assert raw.tolist() == [[3.0, -0.5]]


def test_orthogonal_init_and_small_policy_head():
    net = ActorCritic(DISCRETE, PolicyConfig(hidden_sizes=[32, 32]))
    for i in (0, 1):  # the actor's and the critic's hidden layers
        w_in, w_hidden = net.hidden_w[0][i].detach(), net.hidden_w[1][i].detach()  # (4, 32), (32, 32)
        np.testing.assert_allclose((w_in @ w_in.T).numpy(), 2.0 * np.eye(4), atol=1e-4)  # gain sqrt(2)
        np.testing.assert_allclose((w_hidden.T @ w_hidden).numpy(), 2.0 * np.eye(32), atol=1e-4)
    assert not torch.equal(net.hidden_w[1][0], net.hidden_w[1][1])  # two networks, not one
    assert net.pi_head.weight.abs().max() < 0.05
