"""The clipped PPO loss on a two-sample example worked out by hand (one agent: a leading axis of 1),
and K agents' losses side by side, each over its own weighted samples."""

import math

import pytest
import torch

from rlsweep.ppo.losses import policy_shift, ppo_loss

HALF = torch.full((1, 2), 0.5)  # each of the two samples weighs 1/2 in its agent's means


def example(vf_clip):
    return ppo_loss(
        new_logp=torch.tensor([[math.log(1.1), math.log(1.5)]]),
        old_logp=torch.tensor([[0.0, 0.0]]),
        advantages=torch.tensor([[1.0, -1.0]]),
        new_values=torch.tensor([[1.4, 2.0]]),
        old_values=torch.tensor([[1.0, 1.8]]),
        returns=torch.tensor([[1.5, 1.0]]),
        entropy=torch.tensor([[0.5, 0.7]]),
        weights=HALF,
        clip=0.2, vf_clip=vf_clip, vf_coef=0.5, ent_coef=0.01,
    )


def test_policy_loss_takes_the_pessimistic_side_of_the_clip():
    t = example(vf_clip=None)
    # sample 0: ratio 1.1 inside the clip -> -1.1; sample 1: A<0, ratio 1.5 -> max(1.5, 1.2) = 1.5
    assert t.policy_loss.shape == t.entropy.shape == (1,) and t.loss.shape == ()
    assert t.policy_loss.item() == pytest.approx(0.2, abs=1e-6)
    assert t.entropy.item() == pytest.approx(0.6)


def test_policy_shift_counts_clipped_ratios_and_estimates_kl():
    shift = policy_shift(torch.tensor([[math.log(1.1), math.log(1.5)]]), torch.zeros(1, 2), HALF, clip=0.2)
    assert shift.clip_fraction.shape == shift.approx_kl.shape == (1,)
    assert shift.clip_fraction.item() == pytest.approx(0.5)
    assert shift.approx_kl.item() == pytest.approx(((0.1 - math.log(1.1)) + (0.5 - math.log(1.5))) / 2, rel=1e-5)


def test_value_loss_unclipped_and_clipped():
    assert example(vf_clip=None).value_loss.item() == pytest.approx(0.5 * (0.01 + 1.0) / 2, rel=1e-5)
    # clipped values 1.1 and 1.9: errors 0.16 and 0.81; the max with 0.01 and 1.0 is 0.16 and 1.0
    t = example(vf_clip=0.1)
    assert t.value_loss.item() == pytest.approx(0.5 * (0.16 + 1.0) / 2, rel=1e-5)
    assert t.loss.item() == pytest.approx(0.2 + 0.5 * 0.29 - 0.01 * 0.6, rel=1e-5)


def test_gradient_is_zero_outside_the_clip_in_the_advantage_direction():
    new_logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    t = ppo_loss(new_logp, torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1),
                 torch.zeros(1, 1), torch.ones(1, 1), clip=0.2, vf_clip=None, vf_coef=0.0, ent_coef=0.0)
    t.loss.backward()
    assert new_logp.grad.item() == 0.0


def test_agents_losses_are_their_own_and_padding_weighs_nothing():
    """Two agents: agent 0 is the hand-worked example, agent 1 the same two samples plus a padding slot
    of wild values at weight 0; each agent's terms are its own, and `loss` is their sum."""
    big = 1e3
    t = ppo_loss(
        new_logp=torch.tensor([[math.log(1.1), math.log(1.5), 0.0], [math.log(1.1), math.log(1.5), 3.0]]),
        old_logp=torch.zeros(2, 3),
        advantages=torch.tensor([[1.0, -1.0, 0.0], [1.0, -1.0, big]]),
        new_values=torch.tensor([[1.4, 2.0, 0.0], [1.4, 2.0, big]]),
        old_values=torch.tensor([[1.0, 1.8, 0.0], [1.0, 1.8, -big]]),
        returns=torch.tensor([[1.5, 1.0, 0.0], [1.5, 1.0, -big]]),
        entropy=torch.tensor([[0.5, 0.7, 0.0], [0.5, 0.7, big]]),
        weights=torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]),
        clip=0.2, vf_clip=0.1, vf_coef=0.5, ent_coef=0.01,
    )
    one = example(vf_clip=0.1)
    for got, want in ((t.policy_loss, one.policy_loss), (t.value_loss, one.value_loss), (t.entropy, one.entropy)):
        assert got.shape == (2,)
        torch.testing.assert_close(got, want.expand(2))
    assert t.loss.item() == pytest.approx(2 * one.loss.item(), rel=1e-6)
