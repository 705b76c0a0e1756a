"""The actor-critic network in torch: separate actor and critic MLPs, orthogonally initialised,
evaluated together."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rlsweep.config import PolicyConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo.policy import Weights

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _orthogonal(fan_in: int, fan_out: int, gain: float) -> torch.Tensor:
    """An orthogonally initialised weight, as (fan_in, fan_out): the layout x @ W wants."""
    w = torch.empty(fan_out, fan_in)
    nn.init.orthogonal_(w, gain=gain)
    return w.T.contiguous()


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs of the same hidden widths.

    Hidden layer k of the two networks is one batched matmul: its weights are stacked as
    (2, fan_in, fan_out), index 0 the actor's and 1 the critic's. The output heads are their own.
    An update on minibatches this small is bound by the number of tensor ops, and this halves the
    hidden layers' share. Categorical policy for Discrete actions, diagonal Gaussian with a
    state-independent std for Box.
    """

    def __init__(self, space: SpaceInfo, cfg: PolicyConfig):
        super().__init__()
        self.space = space
        self._act = _ACTIVATIONS[cfg.activation]
        sizes = [space.obs_dim, *cfg.hidden_sizes]
        self.hidden_w = nn.ParameterList()
        self.hidden_b = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            self.hidden_w.append(nn.Parameter(torch.stack([_orthogonal(fan_in, fan_out, math.sqrt(2)) for _ in "ac"])))
            self.hidden_b.append(nn.Parameter(torch.zeros(2, 1, fan_out)))
        self.pi_head = nn.Linear(sizes[-1], space.act_dim)
        self.v_head = nn.Linear(sizes[-1], 1)
        for head, gain in ((self.pi_head, 0.01), (self.v_head, 1.0)):
            nn.init.orthogonal_(head.weight, gain=gain)
            nn.init.zeros_(head.bias)
        self.log_std = None if space.discrete else nn.Parameter(torch.full((space.act_dim,), cfg.log_std_init))

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        """(2, B, H): the last hidden layer of the actor (index 0) and of the critic (1)."""
        x = obs.expand(2, *obs.shape)
        for w, b in zip(self.hidden_w, self.hidden_b, strict=True):
            x = self._act(torch.baddbmm(b, x, w))
        return x

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's values of (B, obs_dim) observations, shape (B,); the actor is not run."""
        return self.v_head(self._features(obs)[1]).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor,
                 with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(log-prob of `actions`, entropy or None, value) under the current parameters.

        Written out rather than through torch.distributions: on minibatches this small the
        distribution objects cost more than the arithmetic.
        """
        features = self._features(obs)
        out = self.pi_head(features[0])
        entropy = None
        if self.log_std is None:
            log_probs = torch.log_softmax(out, dim=-1)
            logp = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            if with_entropy:
                entropy = -(log_probs.exp() * log_probs).sum(-1)
        else:
            z = (actions - out) * torch.exp(-self.log_std)
            logp = (-0.5 * z.pow(2) - self.log_std - _LOG_SQRT_2PI).sum(-1)
            if with_entropy:
                entropy = (0.5 + _LOG_SQRT_2PI + self.log_std).sum().expand(out.shape[0])
        return logp, entropy, self.v_head(features[1]).squeeze(-1)

    def export_weights(self) -> Weights:
        """numpy float32 copies in the layout `policy.NumpyPolicy` reads: per network, W as
        (fan_out, fan_in) and b, layer by layer, the head last."""

        def layers(i: int, head: nn.Linear) -> list[np.ndarray]:
            out: list[torch.Tensor] = []
            for w, b in zip(self.hidden_w, self.hidden_b, strict=True):
                out += [w[i].T, b[i, 0]]
            out += [head.weight, head.bias]
            return [x.detach().cpu().numpy().copy() for x in out]

        weights = {"actor": layers(0, self.pi_head), "critic": layers(1, self.v_head)}
        if self.log_std is not None:
            weights["log_std"] = [self.log_std.detach().cpu().numpy().copy()]
        return weights
