"""The clipped PPO objective, and how far an update moved the policy, as pure functions of tensors."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossTerms(NamedTuple):
    """The PPO loss of a minibatch and its parts, as scalars; `entropy` is None when the bonus is off."""

    loss: torch.Tensor  # what the optimiser minimises
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor | None


class PolicyShift(NamedTuple):
    """How far an update moved the policy from the one that sampled, as scalars."""

    approx_kl: torch.Tensor  # http://joschu.net/blog/kl-approx.html, k3 estimator of KL(old || new)
    clip_fraction: torch.Tensor  # share of samples whose ratio left [1 - clip, 1 + clip]


def ppo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor | None,
    clip: float,
    vf_clip: float | None,
    vf_coef: float,
    ent_coef: float,
) -> LossTerms:
    """The clipped-surrogate PPO loss over one minibatch of B samples.

    Args:
        new_logp: (B,) log-probabilities of the taken actions under the policy being updated.
        old_logp: (B,) the same under the policy that sampled them (no gradient).
        advantages: (B,) advantage estimates (already normalised, if normalisation is on).
        new_values: (B,) the critic's current values; old_values: (B,) the values at sampling time.
        returns: (B,) value targets (advantages + old values).
        entropy: (B,) the policy's entropy per sample, or None when `ent_coef` is 0.
        clip: the ratio clip epsilon; vf_clip: clip on the value change, None for no value clipping.
        vf_coef, ent_coef: weights of the value loss and the entropy bonus.

    Returns:
        `LossTerms`, scalars. Signs: `policy_loss` is the negated clipped surrogate (lower is better),
        `value_loss` is half the (clipped) squared error, and `loss = policy_loss + vf_coef *
        value_loss - ent_coef * entropy`, the one quantity the optimiser minimises.
    """
    ratio = (new_logp - old_logp).exp()
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()

    if vf_clip is None:
        value_loss = 0.5 * (new_values - returns).pow(2).mean()
    else:
        clipped = old_values + (new_values - old_values).clamp(-vf_clip, vf_clip)
        value_loss = 0.5 * torch.max((new_values - returns).pow(2), (clipped - returns).pow(2)).mean()

    loss = policy_loss + vf_coef * value_loss
    entropy_mean = None
    if entropy is not None:  # None where the entropy bonus is off: two fewer ops in every step
        entropy_mean = entropy.mean()
        loss = loss - ent_coef * entropy_mean
    return LossTerms(loss, policy_loss, value_loss, entropy_mean)


@torch.no_grad()
def policy_shift(new_logp: torch.Tensor, old_logp: torch.Tensor, clip: float) -> PolicyShift:
    """How far the policy moved from the one that sampled: (B,) log-probabilities in, scalars out."""
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    return PolicyShift(((ratio - 1) - log_ratio).mean(), ((ratio - 1).abs() > clip).float().mean())
