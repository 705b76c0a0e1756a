"""A learner that is one rank of a data-parallel group (`engine.learners`): `ppo.Learner` with its two
hooks filled in, so that the group's update is the one-learner update."""

from __future__ import annotations

import torch
import torch.distributed

from rlsweep.config import PolicyConfig, PPOConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo.learner import Learner


class DataParallelLearner(Learner):
    """One of `world` learners in a torch.distributed process group already joined.

    Every rank holds the whole batch and draws the same shuffles, computes the loss on its share of
    each minibatch (advantages normalised over the whole minibatch), weighted by the share's size, and
    the ranks sum their gradients with one all-reduce before the identical clip and Adam step. The
    update is then the one-learner update, up to float summation order, and the ranks' parameters
    stay equal. With `world` 1 it is the one learner.
    """

    def __init__(self, space: SpaceInfo, policy: PolicyConfig, ppo: PPOConfig, seed: int, device: str = "cpu",
                 rank: int = 0, world: int = 1):
        super().__init__(space, policy, ppo, seed, device)
        self.rank, self.world = rank, world

    def _share(self, size: int) -> tuple[int, int, float]:
        # shares differ by at most one sample (a batch holds only the valid steps), so each is weighted
        # by its size; a minibatch smaller than the group leaves some ranks nothing
        a, b = size * self.rank // self.world, size * (self.rank + 1) // self.world
        return a, b, (b - a) / size if self.world > 1 and size else 1.0

    def _sum_gradients(self) -> None:
        if self.world > 1:  # the shares' size-weighted gradients sum to the minibatch's
            torch.distributed.all_reduce(self.grad)
