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
    each minibatch (advantages normalised over the whole minibatch, each sample weighted as in the whole
    minibatch's means), and the ranks sum their gradients with one all-reduce before the identical clip and Adam step. The
    update is then the one-learner update, up to float summation order, and the ranks' parameters
    stay equal. With `world` 1 it is the one learner.
    """

    def __init__(self, space: SpaceInfo, policy: PolicyConfig, ppo: PPOConfig, seeds: list[int], device: str = "cpu",
                 rank: int = 0, world: int = 1):
        super().__init__(space, policy, ppo, seeds, device)
        self.rank, self.world = rank, world

    def _share(self, slots: int) -> tuple[int, int]:
        # each sample carries its weight in the whole minibatch's means, so the shares' losses (and
        # gradients) sum to the minibatch's; a minibatch smaller than the group leaves some ranks nothing
        return slots * self.rank // self.world, slots * (self.rank + 1) // self.world

    def _sum_gradients(self) -> None:
        if self.world > 1:  # the shares' gradients sum to the minibatch's
            torch.distributed.all_reduce(self.grad)
