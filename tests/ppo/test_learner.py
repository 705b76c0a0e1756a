"""The learner's update moves the policy the way the advantages say, and target_kl cuts the epochs."""

import numpy as np
import pytest
import torch

from rlsweep.config import PolicyConfig, PPOConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo.batch import TrainBatch
from rlsweep.ppo.learner import Learner

SPACE = SpaceInfo(obs_dim=4, discrete=True, act_dim=2)


def _batch(learner: Learner, n: int = 512) -> TrainBatch:
    """One agent's batch (a leading agent axis of 1) of n samples."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(1, n, 4)).astype(np.float32)
    actions = rng.integers(0, 2, (1, n))
    with torch.no_grad():
        logp, _, values = learner.net.evaluate(torch.as_tensor(obs), torch.as_tensor(actions))
    advantages = np.where(actions == 0, 1.0, -1.0).astype(np.float32)  # action 0 is always the better one
    returns = (values.numpy() + advantages).astype(np.float32)
    return TrainBatch(obs, actions, logp.numpy(), values.numpy(), advantages, returns, np.array([n]))


def _prob_of_action_0(learner: Learner, obs: np.ndarray) -> float:
    with torch.no_grad():
        logp, _, _ = learner.net.evaluate(torch.as_tensor(obs), torch.zeros(obs.shape[:2], dtype=torch.long))
    return float(logp.exp().mean())


def test_update_moves_the_policy_towards_positive_advantages():
    learner = Learner(SPACE, PolicyConfig(hidden_sizes=[16, 16]), PPOConfig(minibatch_size=128, num_epochs=4),
                      seeds=[0])
    batch = _batch(learner)
    before = _prob_of_action_0(learner, batch.obs)
    params_before = [p.detach().clone() for p in learner.net.parameters()]
    stats = learner.update(batch, lr=1e-3)
    after = _prob_of_action_0(learner, batch.obs)
    assert after > before + 0.02
    assert all(not torch.equal(a, p) for a, p in zip(params_before, learner.net.parameters(), strict=True))
    assert all(len(v) == 1 for v in stats.values())  # one value per agent
    assert stats["approx_kl"][0] > 0 and stats["update_epochs"] == [4] and stats["grad_norm"][0] > 0
    assert stats["value_loss"][0] < 0.5  # the critic moved towards returns = values + advantages (loss 0.5 at start)
    assert learner.finite() == [True]


@pytest.mark.parametrize("target_kl, epochs", [(1e-9, 1), (None, 5)])
def test_target_kl_stops_the_epochs(target_kl, epochs):
    learner = Learner(SPACE, PolicyConfig(hidden_sizes=[16]), PPOConfig(minibatch_size=64, num_epochs=5,
                                                                         target_kl=target_kl), seeds=[0])
    assert learner.update(_batch(learner), lr=1e-3)["update_epochs"] == [epochs]
