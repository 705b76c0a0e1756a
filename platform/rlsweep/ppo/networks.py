"""The actor-critic networks in torch: per agent separate actor and critic MLPs, or for images a
convolutional trunk with actor and critic heads; orthogonally initialised; all agents of a trial (one
per seed) evaluated together. `make` picks the one `encoders.choose` says."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rlsweep.config import PolicyConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo import encoders
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
        heads: list[tuple[torch.Tensor, torch.Tensor]] = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            for layer, (fan_in, fan_out) in zip(hidden, zip(sizes[:-1], sizes[1:], strict=True), strict=True):
                layer += [_orthogonal(fan_in, fan_out, math.sqrt(2), g) for _ in "ac"]
            heads.append(_head_weights(sizes[-1], space.act_dim, g))
        self.hidden_w = nn.ParameterList(nn.Parameter(torch.stack(ws)) for ws in hidden)
        self.hidden_b = nn.ParameterList(nn.Parameter(torch.zeros(2 * self.k, 1, n)) for n in sizes[1:])
        _add_heads(self, heads, space, cfg)

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
        observations and (K, B) (Discrete) or (K, B, act_dim) (Box) actions."""
        features = self._features(obs)
        return _heads(self, features[:, 0], features[:, 1], actions, with_entropy)

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


class ConvActorCritic(nn.Module):
    """K agents' convolutional actor-critics (`encoders.Encoder` of kind cnn), one per seed, run as one.

    Per agent the Nature-DQN trunk (`encoders.NATURE_CONVS`, each with a ReLU, then a dense layer of
    `policy.cnn_dense` with a ReLU), shared by the actor and critic heads or one trunk each
    (`policy.shared_trunk`). The agents' trunks are the groups of grouped convolutions: G = K x trunks
    groups, agent k's are k x trunks, ...; conv weights (G x out, in, kh, kw), the dense layer (G,
    flat, dense); the heads (K, dense, out) as `ActorCritic`'s. Initialised orthogonally as CleanRL's
    ppo_atari does (gain sqrt 2 in the trunk, 0.01 the actor's head, 1 the critic's), agent k from its
    own seed alone. uint8 pixels are scaled by 1/255 here, in the network (in the first convolution).
    """

    def __init__(self, space: SpaceInfo, cfg: PolicyConfig, seeds: list[int]):
        super().__init__()
        enc = encoders.choose(space, cfg)
        self.space, self.encoder, self.k, self.trunks = space, enc, len(seeds), enc.trunks
        convs: list[list[torch.Tensor]] = [[] for _ in encoders.NATURE_CONVS]
        dense: list[torch.Tensor] = []
        heads: list[tuple[torch.Tensor, torch.Tensor]] = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            for _ in range(self.trunks):
                fan_in = enc.image[0]
                for layer, (out, kernel, _) in zip(convs, encoders.NATURE_CONVS, strict=True):
                    w = torch.empty(out, fan_in, kernel, kernel)
                    layer.append(nn.init.orthogonal_(w, gain=math.sqrt(2), generator=g))
                    fan_in = out
                dense.append(_orthogonal(enc.flat_features, enc.dense, math.sqrt(2), g))
            heads.append(_head_weights(enc.dense, space.act_dim, g))
        groups = self.k * self.trunks
        self.conv_w = nn.ParameterList(nn.Parameter(torch.cat(ws)) for ws in convs)
        self.conv_b = nn.ParameterList(nn.Parameter(torch.zeros(groups * out)) for out, _, _ in encoders.NATURE_CONVS)
        self.dense_w = nn.Parameter(torch.stack(dense))
        self.dense_b = nn.Parameter(torch.zeros(groups, 1, enc.dense))
        _add_heads(self, heads, space, cfg)

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        """(K, trunks, B, dense): each agent's trunk output(s), from (K, B, *obs_shape) images."""
        k, b = obs.shape[:2]
        x = obs.permute(0, 1, 4, 2, 3) if self.encoder.channels_last else obs
        c, h, w = x.shape[2:]
        if self.trunks == 2:
            x = x.unsqueeze(1).expand(k, 2, b, c, h, w).reshape(2 * k, b, c, h, w)
        groups = k * self.trunks
        # channels last (oneDNN's convolutions, forward and backward, run about twice as fast so on
        # CPUs), laid out while still uint8 (a quarter of the bytes to move), then float; the pixels'
        # scale is folded into the first layer's weight
        x = x.transpose(0, 1).reshape(b, groups * c, h, w).contiguous(memory_format=torch.channels_last).float()
        for i, (weight, bias, (_, _, stride)) in enumerate(
                zip(self.conv_w, self.conv_b, encoders.NATURE_CONVS, strict=True)):
            if i == 0 and self.encoder.scale != 1.0:
                weight = weight * self.encoder.scale
            x = torch.relu(torch.nn.functional.conv2d(x, weight, bias, stride=stride, groups=groups))
        x = x.reshape(b, groups, -1).transpose(0, 1)
        return torch.relu(torch.baddbmm(self.dense_b, x, self.dense_w)).view(k, self.trunks, b, -1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The critics' values of (K, B, *obs_shape) observations, shape (K, B)."""
        return torch.baddbmm(self.v_b, self._features(obs)[:, -1], self.v_w).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor,
                 with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """As `ActorCritic.evaluate`, for (K, B, *obs_shape) observations."""
        features = self._features(obs)
        return _heads(self, features[:, 0], features[:, -1], actions, with_entropy)

    def export_weights(self) -> Weights:
        """numpy float32 copies in the layout `policy.NumpyPolicy` reads: "trunk": per convolution W as
        (G, kh x kw x in, out) (an image patch flattened channels last) and b as (G, 1, out), then the
        dense layer with its rows in channels-last order; "actor" and "critic": their heads."""
        groups = self.k * self.trunks
        trunk: list[torch.Tensor] = []
        for weight, bias in zip(self.conv_w, self.conv_b, strict=True):
            out, fan_in, kh, kw = weight.shape
            w = weight.view(groups, out // groups, fan_in, kh, kw).permute(0, 3, 4, 2, 1)
            trunk += [w.reshape(groups, kh * kw * fan_in, out // groups), bias.view(groups, 1, -1)]
        c, h, w = self.encoder.conv_shapes()[-1]
        dense = self.dense_w.view(groups, c, h, w, -1).permute(0, 2, 3, 1, 4).reshape(groups, c * h * w, -1)
        trunk += [dense, self.dense_b]
        weights = {name: [x.detach().cpu().numpy().copy() for x in xs]
                   for name, xs in (("trunk", trunk), ("actor", [self.pi_w, self.pi_b]),
                                    ("critic", [self.v_w, self.v_b]))}
        if self.log_std is not None:
            weights["log_std"] = [self.log_std.detach().cpu().numpy().copy()]
        return weights


def make(space: SpaceInfo, cfg: PolicyConfig, seeds: list[int]) -> ActorCritic | ConvActorCritic:
    """The network `policy.encoder` asks for on this env (`encoders.choose`), for agents on `seeds`."""
    if encoders.choose(space, cfg).kind == "cnn":
        return ConvActorCritic(space, cfg, seeds)
    return ActorCritic(space, cfg, seeds)


def _head_weights(width: int, act_dim: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One agent's actor and critic head weights on `width` features, drawn from its generator:
    orthogonal with gain 0.01 (the actor's: a near-uniform first policy) and 1 (the critic's)."""
    return _orthogonal(width, act_dim, 0.01, g), _orthogonal(width, 1, 1.0, g)


def _add_heads(net: nn.Module, heads: list[tuple[torch.Tensor, torch.Tensor]], space: SpaceInfo,
               cfg: PolicyConfig) -> None:
    """The K agents' heads as `net`'s parameters (what `_heads` reads): pi_w, pi_b, v_w, v_b stacked
    along the agent axis, and the Gaussian's log std for Box actions."""
    k = len(heads)
    net.pi_w = nn.Parameter(torch.stack([pi for pi, _ in heads]))
    net.pi_b = nn.Parameter(torch.zeros(k, 1, space.act_dim))
    net.v_w = nn.Parameter(torch.stack([v for _, v in heads]))
    net.v_b = nn.Parameter(torch.zeros(k, 1, 1))
    net.log_std = None if space.discrete else nn.Parameter(torch.full((k, 1, space.act_dim), cfg.log_std_init))


def _heads(net: nn.Module, actor: torch.Tensor, critic: torch.Tensor, actions: torch.Tensor,
           with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`evaluate` from the actors' and critics' last features, (K, B, H) each, through `net`'s heads
    (pi_w, pi_b, v_w, v_b, log_std).

    Written out rather than through torch.distributions: on minibatches this small the distribution
    objects cost more than the arithmetic.
    """
    out = torch.baddbmm(net.pi_b, actor, net.pi_w)
    entropy = None
    if net.log_std is None:
        log_probs = torch.log_softmax(out, dim=-1)
        logp = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        if with_entropy:
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    else:
        z = (actions - out) * torch.exp(-net.log_std)
        logp = (-0.5 * z.pow(2) - net.log_std - _LOG_SQRT_2PI).sum(-1)
        if with_entropy:
            entropy = (0.5 + _LOG_SQRT_2PI + net.log_std).sum(-1).expand(out.shape[:2])
    return logp, entropy, torch.baddbmm(net.v_b, critic, net.v_w).squeeze(-1)


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
