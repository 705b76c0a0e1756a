"""The actor-critic networks in torch: per agent separate actor and critic MLPs, orthogonally
initialised; all agents of a trial (one per seed) evaluated together."""

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


def _orthogonal(fan_in: int, fan_out: int, gain: float, generator: torch.Generator) -> torch.Tensor:
    """An orthogonally initialised weight, as (fan_in, fan_out): the layout x @ W wants."""
    w = torch.empty(fan_out, fan_in)
    nn.init.orthogonal_(w, gain=gain, generator=generator)
    return w.T.contiguous()


class ActorCritic(nn.Module):
    """K agents' actor-critics, one per seed, stacked along a leading seed axis and run as one.

    Each agent has separate actor and critic MLPs of the same hidden widths. Hidden layer l of all 2K
    networks is one batched matmul: its weights are stacked as (2K, fan_in, fan_out), index 2k the
    actor's and 2k + 1 the critic's of agent k; the heads are (K, fan_in, fan_out) likewise. An update
    on minibatches this small is bound by the number of tensor ops, not their size, so K agents cost
    little more than one. Agent k is initialised from its own seed alone, exactly as a one-agent network
    on that seed. Categorical policy for Discrete actions, diagonal Gaussian with a state-independent std
    for Box.
    """

    def __init__(self, space: SpaceInfo, cfg: PolicyConfig, seeds: list[int]):
        super().__init__()
        self.space = space
        self.k = len(seeds)
        self._act = _ACTIVATIONS[cfg.activation]
        sizes = [space.obs_dim, *cfg.hidden_sizes]
        hidden: list[list[torch.Tensor]] = [[] for _ in sizes[1:]]
        heads: list[list[torch.Tensor]] = [[], []]
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            for layer, (fan_in, fan_out) in zip(hidden, zip(sizes[:-1], sizes[1:], strict=True), strict=True):
                layer += [_orthogonal(fan_in, fan_out, math.sqrt(2), g) for _ in "ac"]
            heads[0].append(_orthogonal(sizes[-1], space.act_dim, 0.01, g))
            heads[1].append(_orthogonal(sizes[-1], 1, 1.0, g))
        self.hidden_w = nn.ParameterList(nn.Parameter(torch.stack(ws)) for ws in hidden)
        self.hidden_b = nn.ParameterList(nn.Parameter(torch.zeros(2 * self.k, 1, n)) for n in sizes[1:])
        self.pi_w = nn.Parameter(torch.stack(heads[0]))
        self.pi_b = nn.Parameter(torch.zeros(self.k, 1, space.act_dim))
        self.v_w = nn.Parameter(torch.stack(heads[1]))
        self.v_b = nn.Parameter(torch.zeros(self.k, 1, 1))
        self.log_std = None if space.discrete else nn.Parameter(
            torch.full((self.k, 1, space.act_dim), cfg.log_std_init))

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        """(K, 2, B, H): the last hidden layer of each agent's actor ([:, 0]) and critic ([:, 1]), from
        (K, B, obs_dim) observations (agent k sees obs[k])."""
        k, b, d = obs.shape
        x = obs.unsqueeze(1).expand(k, 2, b, d).reshape(2 * k, b, d)
        for w, bias in zip(self.hidden_w, self.hidden_b, strict=True):
            x = self._act(torch.baddbmm(bias, x, w))
        return x.view(k, 2, b, -1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The critics' values of (K, B, obs_dim) observations, shape (K, B); the actors are not run."""
        return torch.baddbmm(self.v_b, self._features(obs)[:, 1], self.v_w).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor,
                 with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(log-prob of `actions`, entropy or None, value), each (K, B), for (K, B, obs_dim)
        observations and (K, B) (Discrete) or (K, B, act_dim) (Box) actions.

        Written out rather than through torch.distributions: on minibatches this small the
        distribution objects cost more than the arithmetic.
        """
        features = self._features(obs)
        out = torch.baddbmm(self.pi_b, features[:, 0], self.pi_w)
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
                entropy = (0.5 + _LOG_SQRT_2PI + self.log_std).sum(-1).expand(out.shape[:2])
        return logp, entropy, torch.baddbmm(self.v_b, features[:, 1], self.v_w).squeeze(-1)

    def export_weights(self) -> Weights:
        """numpy float32 copies in the layout `policy.NumpyPolicy` reads: per network, layer by layer,
        W as (K, fan_in, fan_out) and b as (K, 1, fan_out), the head last."""

        def layers(i: int, head_w: torch.Tensor, head_b: torch.Tensor) -> list[np.ndarray]:
            out: list[torch.Tensor] = []
            for w, b in zip(self.hidden_w, self.hidden_b, strict=True):
                out += [w[i::2], b[i::2]]
            out += [head_w, head_b]
            return [x.detach().cpu().numpy().copy() for x in out]

        weights = {"actor": layers(0, self.pi_w, self.pi_b), "critic": layers(1, self.v_w, self.v_b)}
        if self.log_std is not None:
            weights["log_std"] = [self.log_std.detach().cpu().numpy().copy()]
        return weights


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A network state saved before the seed axis (one agent, heads as nn.Linear) in today's layout;
    today's states are returned as they are."""
    if "pi_head.weight" not in state:
        return state
    out = {k: v for k, v in state.items() if k.startswith("hidden_")}
    for name, head in (("pi", "pi_head"), ("v", "v_head")):
        out[f"{name}_w"] = state[f"{head}.weight"].T.unsqueeze(0).contiguous()
        out[f"{name}_b"] = state[f"{head}.bias"].view(1, 1, -1)
    if "log_std" in state:
        out["log_std"] = state["log_std"].view(1, 1, -1)
    return out
