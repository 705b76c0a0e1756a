"""The actor-critic network in torch: separate actor and critic MLPs with orthogonal init."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rlsweep.config import PolicyConfig
from rlsweep.envs import SpaceInfo
from rlsweep.policy import Weights

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        linear = nn.Linear(fan_in, fan_out)
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Categorical policy for Discrete actions, diagonal Gaussian (state-independent std) for Box."""

    def __init__(self, space: SpaceInfo, cfg: PolicyConfig):
        super().__init__()
        self.space = space
        hidden = list(cfg.hidden_sizes)
        self.actor = _mlp([space.obs_dim, *hidden, space.act_dim], cfg.activation, out_gain=0.01)
        self.critic = _mlp([space.obs_dim, *hidden, 1], cfg.activation, out_gain=1.0)
        self.log_std = None if space.discrete else nn.Parameter(torch.full((space.act_dim,), cfg.log_std_init))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(log-prob of `actions`, entropy, value) under the current parameters.

        Written out rather than through torch.distributions: on minibatches this small the
        distribution objects cost more than the arithmetic.
        """
        out = self.actor(obs)
        if self.log_std is None:
            log_probs = torch.log_softmax(out, dim=-1)
            logp = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
        else:
            z = (actions - out) * torch.exp(-self.log_std)
            logp = (-0.5 * z.pow(2) - self.log_std - _LOG_SQRT_2PI).sum(-1)
            entropy = (0.5 + _LOG_SQRT_2PI + self.log_std).sum().expand(out.shape[0])
        return logp, entropy, self.value(obs)

    def export_weights(self) -> Weights:
        """numpy float32 copies, in the layout `policy.NumpyPolicy` reads."""

        def layers(seq: nn.Sequential) -> list[np.ndarray]:
            out = []
            for m in seq:
                if isinstance(m, nn.Linear):
                    out += [m.weight.detach().cpu().numpy().copy(), m.bias.detach().cpu().numpy().copy()]
            return out

        weights = {"actor": layers(self.actor), "critic": layers(self.critic)}
        if self.log_std is not None:
            weights["log_std"] = [self.log_std.detach().cpu().numpy().copy()]
        return weights
