"""Which network reads an env's observations, and the shape arithmetic of the convolutional one.

Shared by the learner's torch networks (`networks.py`) and the workers' numpy policy (`policy.py`), so
both build the same layers from the same rule. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlsweep.config import ConfigError, PolicyConfig
from rlsweep.envs import SpaceInfo

# The Nature-DQN trunk (Mnih et al. 2015), as CleanRL's ppo_atari and Stable-Baselines3's CnnPolicy
# build it: (out channels, kernel, stride) per convolution, each followed by a ReLU, then one dense layer.
NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
PIXEL_SCALE = 1.0 / 255.0  # uint8 pixels enter the network in [0, 1]


@dataclass(frozen=True)
class Encoder:
    """How one agent's network reads an observation.

    mlp: the observation flattened to `space.obs_dim` floats. cnn: an image, `channels_last` when its
    channels are its last axis (H, W, C) else its first (C, H, W); `scale` multiplies the pixels in the
    network (1/255 for uint8, 1 for float images); `shared`: actor and critic on one trunk.
    """

    kind: str  # "mlp" or "cnn"
    obs_shape: tuple[int, ...]
    channels_last: bool = False
    scale: float = 1.0
    shared: bool = False
    dense: int = 0

    @property
    def image(self) -> tuple[int, int, int]:
        """(C, H, W) of an image observation."""
        s = self.obs_shape
        return (s[2], s[0], s[1]) if self.channels_last else (s[0], s[1], s[2])

    @property
    def trunks(self) -> int:
        """Convolutional trunks per agent: 1 shared by actor and critic, or 2 (actor's, critic's)."""
        return 1 if self.shared else 2

    def conv_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) after each convolution."""
        c, h, w = self.image
        out = []
        for channels, kernel, stride in NATURE_CONVS:
            h, w, c = (h - kernel) // stride + 1, (w - kernel) // stride + 1, channels
            out.append((c, h, w))
        return out

    @property
    def flat_features(self) -> int:
        """Size of the last convolution's output, flattened: the dense layer's input."""
        c, h, w = self.conv_shapes()[-1]
        return c * h * w


MIN_SIDE = 36  # the smallest image the trunk's three convolutions leave at least one pixel of


def is_image(space: SpaceInfo) -> bool:
    """A 3-d uint8 observation the trunk can read (at least 36 x 36 pixels): what `encoder: auto`
    reads with the cnn (a smaller one, such as a 7 x 7 grid world's, with the mlp)."""
    s = space.obs_shape
    return len(s) == 3 and space.obs_dtype == "uint8" and sorted(s)[1] >= MIN_SIDE


def kind_of(space: SpaceInfo, policy: PolicyConfig) -> str:
    """"mlp" or "cnn": `policy.encoder`, with auto resolved on this env's observations."""
    if policy.encoder == "auto":
        return "cnn" if is_image(space) else "mlp"
    return policy.encoder


def choose(space: SpaceInfo, policy: PolicyConfig) -> Encoder:
    """The encoder `policy.encoder` asks for on this env's observations; a ConfigError naming the key
    when the two do not fit together."""
    kind = kind_of(space, policy)
    if kind == "mlp":
        return Encoder("mlp", space.obs_shape)
    shape = space.obs_shape
    if len(shape) != 3:
        raise ConfigError(f"key 'policy.encoder': cnn reads images (H x W x C or C x H x W), this env's "
                          f"observations have shape {shape}: use mlp")
    if policy.normalize_observations:
        raise ConfigError("key 'policy.normalize_observations': the cnn scales pixels itself (uint8 by 1/255); "
                          "set it false")
    channels_last = shape[-1] < shape[0]  # the channel axis is the short one: (84, 84, 3) or (4, 84, 84)
    enc = Encoder("cnn", shape, channels_last=channels_last,
                  scale=PIXEL_SCALE if space.obs_dtype == "uint8" else 1.0,
                  shared=policy.shared_trunk, dense=policy.cnn_dense)
    _, h, w = enc.image
    if min(enc.conv_shapes()[-1][1:]) < 1:
        raise ConfigError(f"key 'policy.encoder': the cnn's convolutions need images of at least 36 x 36 pixels, "
                          f"this env's are {h} x {w}: use mlp")
    return enc
