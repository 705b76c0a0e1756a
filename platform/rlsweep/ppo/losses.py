"""The clipped PPO objective, and how far an update moved the policy, as pure functions of tensors."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossTerms(NamedTuple):
    """The PPO loss of a minibatch and its parts per agent, (K,); `entropy` is None when the bonus is off."""

    loss: torch.Tensor  # what the optimiser minimises: a scalar, the sum of the agents' losses
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor | None


class PolicyShift(NamedTuple):
    """How far an update moved each agent's policy from the one that sampled, (K,)."""

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
    weights: torch.Tensor,
    clip: float,
    vf_clip: float | None,
    vf_coef: float,
    ent_coef: float,
) -> LossTerms:
    """The clipped-surrogate PPO loss of K agents, each over its own minibatch of (up to) B samples.

    Args:
        new_logp: (K, B) log-probabilities of the taken actions under the policies being updated.
        old_logp: (K, B) the same under the policies that sampled them (no gradient).
        advantages: (K, B) advantage estimates (already normalised, if normalisation is on).
        new_values: (K, B) the critics' current values; old_values: (K, B) the values at sampling time.
        returns: (K, B) value targets (advantages + old values).
        entropy: (K, B) the policies' entropy per sample, or None when `ent_coef` is 0.
        weights: (K, B) each sample's weight in its agent's means: 1 / (the agent's minibatch size) for
            its samples, 0 for padding (agents' minibatches differ in size by a few samples).
        clip: the ratio clip epsilon; vf_clip: clip on the value change, None for no value clipping.
        vf_coef, ent_coef: weights of the value loss and the entropy bonus.

    Returns:
        `LossTerms`: per agent, `policy_loss` is the negated clipped surrogate (lower is better),
        `value_loss` is half the (clipped) squared error, and an agent's loss is `policy_loss + vf_coef *
        value_loss - ent_coef * entropy`; `loss` sums the agents' (their parameters are disjoint, so each
        agent's gradient is its own loss's).
    """
    ratio = (new_logp - old_logp).exp()
    policy_loss = (torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)) * weights).sum(-1)

    if vf_clip is None:
        value_loss = 0.5 * ((new_values - returns).pow(2) * weights).sum(-1)
    else:
        clipped = old_values + (new_values - old_values).clamp(-vf_clip, vf_clip)
        value_loss = 0.5 * (torch.max((new_values - returns).pow(2), (clipped - returns).pow(2)) * weights).sum(-1)

    per_agent = policy_loss + vf_coef * value_loss
    entropy_mean = None
    if entropy is not None:  # None where the entropy bonus is off: two fewer ops in every step
        entropy_mean = (entropy * weights).sum(-1)
        per_agent = per_agent - ent_coef * entropy_mean
    return LossTerms(per_agent.sum(), policy_loss, value_loss, entropy_mean)


@torch.no_grad()
def policy_shift(new_logp: torch.Tensor, old_logp: torch.Tensor, weights: torch.Tensor, clip: float) -> PolicyShift:
    """How far each policy moved from the one that sampled: (K, B) log-probabilities and sample
    weights (as `ppo_loss` takes them) in, (K,) out."""
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    return PolicyShift((((ratio - 1) - log_ratio) * weights).sum(-1),
                       (((ratio - 1).abs() > clip).float() * weights).sum(-1))
