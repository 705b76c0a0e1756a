"""The clipped PPO objective as a pure function of tensors."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossTerms(NamedTuple):
    loss: torch.Tensor  # what the optimiser minimises
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor  # http://joschu.net/blog/kl-approx.html, k3 estimator
    clip_fraction: torch.Tensor


def ppo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip: float,
    vf_clip: float | None,
    vf_coef: float,
    ent_coef: float,
) -> LossTerms:
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()

    if vf_clip is None:
        value_loss = 0.5 * (new_values - returns).pow(2).mean()
    else:
        clipped = old_values + (new_values - old_values).clamp(-vf_clip, vf_clip)
        value_loss = 0.5 * torch.max((new_values - returns).pow(2), (clipped - returns).pow(2)).mean()

    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return LossTerms(loss, policy_loss, value_loss, entropy_mean, approx_kl, clip_fraction)
