"""The acting policy: the actor-critic forward pass in numpy, for rollout and evaluation workers.

Workers act on small batches, where numpy is several times faster than torch, and they never import
torch (that keeps a worker's start-up and memory small). The weights come from `networks.ActorCritic`
or `networks.ConvActorCritic` (`export_weights`); a test holds the forward passes to the same numbers.
The convolutions are matrix products over image patches (im2col), channels last.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rlsweep.config import PolicyConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo import encoders

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


def one_agent(weights: Weights, k: int) -> Weights:
    """Agent k's weights alone, as a one-agent policy's (each array's leading axis holds the agents'
    groups in order: one per agent, or a trunk each for actor and critic)."""
    agents = weights["actor"][0].shape[0]
    out = {}
    for key, ws in weights.items():
        per = ws[0].shape[0] // agents
        out[key] = [w[k * per : (k + 1) * per] for w in ws]
    return out


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, kernel: int, stride: int, scale: float) -> np.ndarray:
    """ReLU(convolution of `scale` x) of (G, B, H, W, C) images with G groups' (G, kernel x kernel x C,
    out) weights (`networks.ConvActorCritic.export_weights`), as (G, B, H', W', out) float32."""
    g, n = x.shape[:2]
    patches = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    oh, ow = patches.shape[2:4]  # patches: (G, B, H', W', C, kh, kw), flattened as the weights' rows
    cols = patches.transpose(0, 1, 2, 3, 5, 6, 4).reshape(g, n * oh * ow, -1).astype(np.float32)
    if scale != 1.0:
        cols *= np.float32(scale)
    out = np.matmul(cols, w) + b
    return np.maximum(out, 0.0, out=out).reshape(g, n, oh, ow, -1)


class NumpyPolicy:
    """Acts with the current weights of K agents at once: samples (or picks the mode of) each agent's
    action distribution. Observations are (K, N, ...) as `prepare` makes them: agent k acts on obs[k]."""

    def __init__(self, space: SpaceInfo, policy: PolicyConfig):
        self.space = space
        self.encoder = encoders.choose(space, policy)
        self._act = _ACTIVATIONS[policy.activation]
        self.weights: Weights | None = None
        cnn = self.encoder.kind == "cnn"
        self.obs_shape = space.obs_shape if cnn else (space.obs_dim,)  # one observation, as `prepare` gives it
        self.obs_dtype = np.dtype(space.obs_dtype) if cnn else np.dtype(np.float32)

    def load(self, weights: Weights) -> None:
        """Acts with `weights` (`networks.ActorCritic.export_weights`' layout) from now on; not copied."""
        self.weights = weights

    def prepare(self, obs: np.ndarray) -> np.ndarray:
        """(K, N, *env observation) observations as this policy reads them: flattened to float32 for
        the mlp (then normalised where that is on), as they are (uint8 pixels) for the cnn."""
        if self.encoder.kind == "cnn":
            return obs
        return np.asarray(obs, np.float32).reshape(*obs.shape[:2], -1)

    def _inputs(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the actor and the critic heads read: the observations themselves (mlp), or the trunk's
        features (cnn): (K, N, dense) each."""
        if self.encoder.kind != "cnn":
            return obs, obs
        enc, trunk = self.encoder, self.weights["trunk"]
        x = obs if enc.channels_last else obs.transpose(0, 1, 3, 4, 2)
        if enc.trunks == 2:
            x = np.repeat(x, 2, axis=0)
        for i, (_, kernel, stride) in enumerate(encoders.NATURE_CONVS):
            # the first layer's patches are cut from the pixels as they are (uint8: a quarter of the
            # bytes to copy) and scaled after
            x = _conv(x, trunk[2 * i], trunk[2 * i + 1], kernel, stride, enc.scale if i == 0 else 1.0)
        x = np.matmul(x.reshape(*x.shape[:2], -1), trunk[-2]) + trunk[-1]
        x = np.maximum(x, 0.0, out=x)
        return x[0 :: enc.trunks], x[enc.trunks - 1 :: enc.trunks]

    def value(self, obs: np.ndarray) -> np.ndarray:
        """The critics' values of (K, N, ...) observations, shape (K, N)."""
        return _mlp(self.weights["critic"], self._inputs(obs)[1], self._act)[..., 0]

    def act(self, obs: np.ndarray, rngs: list[np.random.Generator]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions, their log-probs, and the values of `obs`; agent k draws from `rngs[k]`."""
        actor, critic = self._inputs(obs)
        out = _mlp(self.weights["actor"], actor, self._act)
        values = _mlp(self.weights["critic"], critic, self._act)[..., 0]
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
        out = _mlp(self.weights["actor"], self._inputs(obs)[0], self._act)
        return out.argmax(axis=-1) if self.space.discrete else out

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Actions as the env takes them: clipped to a Box's bounds (the log-prob is of the unclipped)."""
        if self.space.discrete:
            return actions
        return np.clip(actions, self.space.act_low, self.space.act_high)
