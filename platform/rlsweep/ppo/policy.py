"""The acting policy: the actor-critic forward pass in numpy, for rollout and evaluation workers.

Workers act on small batches, where numpy is several times faster than torch, and they never import
torch (that keeps a worker's start-up and memory small). The weights come from `networks.ActorCritic`
(`export_weights`); a test holds the two forward passes to the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from rlsweep.envs import SpaceInfo

Weights = dict[str, list[np.ndarray]]  # {"actor": [W0, b0, ...], "critic": [...], "log_std": [v]}, each (K, ...)

_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _mlp(layers: list[np.ndarray], x: np.ndarray, act) -> np.ndarray:
    n = len(layers) // 2
    for i in range(n):
        x = np.matmul(x, layers[2 * i]) + layers[2 * i + 1]
        if i < n - 1:
            x = act(x)
    return x


class NumpyPolicy:
    """Acts with the current weights of K agents at once: samples (or picks the mode of) each agent's
    action distribution. Observations are (K, N, obs_dim): agent k acts on obs[k]."""

    def __init__(self, space: SpaceInfo, activation: str):
        self.space = space
        self._act = _ACTIVATIONS[activation]
        self.weights: Weights | None = None

    def load(self, weights: Weights) -> None:
        """Acts with `weights` (`networks.ActorCritic.export_weights`' layout) from now on; not copied."""
        self.weights = weights

    def value(self, obs: np.ndarray) -> np.ndarray:
        """The critics' values of (K, N, obs_dim) observations, shape (K, N)."""
        return _mlp(self.weights["critic"], obs, self._act)[..., 0]

    def act(self, obs: np.ndarray, rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions, their log-probs, and the values of `obs`; agent k draws from `rngs[k]`."""
        out = _mlp(self.weights["actor"], obs, self._act)
        values = self.value(obs)
        n = obs.shape[1]
        if self.space.discrete:
            logits = out - out.max(axis=-1, keepdims=True)
            log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            cdf = np.exp(log_probs).cumsum(axis=-1)
            u = np.stack([rng.random((n, 1), dtype=np.float32) for rng in rngs]) * cdf[..., -1:]
            actions = np.minimum((u > cdf).sum(axis=-1), self.space.act_dim - 1)
            logp = np.take_along_axis(log_probs, actions[..., None], axis=-1)[..., 0]
            return actions, logp.astype(np.float32), values
        log_std = self.weights["log_std"][0]
        noise = np.stack([rng.standard_normal((n, self.space.act_dim), dtype=np.float32) for rng in rngs])
        actions = out + np.exp(log_std) * noise
        logp = (-0.5 * noise**2 - log_std - _LOG_SQRT_2PI).sum(axis=-1)
        return actions.astype(np.float32), logp.astype(np.float32), values

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """The distributions' modes: argmax for Discrete, the mean for Box (the critics are not run)."""
        out = _mlp(self.weights["actor"], obs, self._act)
        return out.argmax(axis=-1) if self.space.discrete else out

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Actions as the env takes them: clipped to a Box's bounds (the log-prob is of the unclipped)."""
        if self.space.discrete:
            return actions
        return np.clip(actions, self.space.act_low, self.space.act_high)
