"""The PPO learner: epochs of shuffled minibatches over one batch, in torch."""

from __future__ import annotations

import io

import numpy as np
import torch

from rlsweep import metrics as M
from rlsweep.config import PolicyConfig, PPOConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo.adam import FlatAdam
from rlsweep.ppo.batch import TrainBatch, explained_variance
from rlsweep.ppo.losses import policy_shift, ppo_loss
from rlsweep.ppo.networks import ActorCritic
from rlsweep.ppo.policy import Weights


class Learner:
    """Owns the network, the optimiser and the minibatch RNG; `update` is PPO's update in one process.

    Two hooks let a group of learners split each minibatch between them (`engine.learners`'
    data-parallel learner overrides them): `_share` (which samples of a minibatch this learner computes
    the loss on, and their weight: all of them, weight 1, here) and `_sum_gradients` (nothing to sum
    here).
    """

    def __init__(self, space: SpaceInfo, policy: PolicyConfig, ppo: PPOConfig, seed: int, device: str = "cpu"):
        self.cfg = ppo
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.net = ActorCritic(space, policy).to(self.device)
        # every parameter is a view into one flat tensor and every gradient into another, so that
        # zeroing, clipping and the Adam step are a few tensor ops each (see adam.py)
        params = list(self.net.parameters())
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.flat[offset : offset + n].view_as(p)
            p.grad = self.grad[offset : offset + n].view_as(p)  # backward accumulates into it in place
            offset += n
        self.adam = FlatAdam(self.flat, eps=ppo.adam_eps)
        self.rng = np.random.default_rng([seed, 0x1EA7])

    def weights(self) -> Weights:
        """The current network as numpy float32 copies, for the workers' `policy.NumpyPolicy`."""
        return self.net.export_weights()

    def update(self, batch: TrainBatch, lr: float) -> dict[str, float]:
        """The PPO epochs over one batch: `num_epochs` passes of shuffled minibatches, each a clipped
        surrogate loss (`losses.ppo_loss`), global gradient clipping and an Adam step.

        Args:
            batch: N valid samples (flat arrays of length N: obs (N, obs_dim), actions, old log-probs,
                old values, advantages, returns), as `batch.to_train_batch` makes them.
            lr: the learning rate for every step of this update (see `training.learning_rate`).

        Returns:
            Metrics named in `metrics.py`: the loss terms and policy shift of the updated policy on
            the whole batch, the mean gradient norm before clipping, the critic's explained variance,
            the lr and the epochs run (fewer than `num_epochs` when `target_kl` stops them).
        """
        cfg = self.cfg
        # (arrays that arrive through Ray's object store are read-only: torch gets a copy of those)
        obs, actions, old_logp, old_values, advantages, returns = (
            torch.as_tensor(v if v.flags.writeable else v.copy(), device=self.device) for v in batch)
        data = (obs, actions, old_logp, old_values, advantages, returns)
        n = len(obs)
        bounds = np.linspace(0, n, cfg.num_minibatches + 1).astype(int).tolist()
        grad_norm_sum = torch.zeros((), device=self.device)
        epochs = steps = 0
        for _ in range(cfg.num_epochs):
            epochs += 1
            # one shuffle per epoch; minibatches are then contiguous slices (views, no gathers)
            perm = torch.as_tensor(self.rng.permutation(n), device=self.device)
            mb_obs, mb_act, mb_logp, mb_val, mb_adv, mb_ret = (x[perm] for x in data)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                adv = mb_adv[lo:hi]
                if cfg.normalize_advantages and hi - lo > 1:  # over the whole minibatch
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                a, b, weight = self._share(hi - lo)
                self.grad.zero_()
                if b > a:
                    lo, hi, adv = lo + a, lo + b, adv[a:b]
                    logp, entropy, values = self.net.evaluate(mb_obs[lo:hi], mb_act[lo:hi], cfg.ent_coef != 0)
                    terms = ppo_loss(
                        logp, mb_logp[lo:hi], adv, values, mb_val[lo:hi], mb_ret[lo:hi], entropy,
                        clip=cfg.clip, vf_clip=cfg.vf_clip, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
                    )
                    (terms.loss if weight == 1.0 else terms.loss * weight).backward()
                self._sum_gradients()
                grad_norm = torch.linalg.vector_norm(self.grad)
                self.grad.mul_(torch.clamp(cfg.max_grad_norm / (grad_norm + 1e-6), max=1.0))
                self.adam.step(self.grad, lr)
                grad_norm_sum += grad_norm
                steps += 1
            if cfg.target_kl is not None:  # stats of the policy as it stands after this epoch
                stats = self._diagnostics(data)
                if stats[M.APPROX_KL] > cfg.target_kl:
                    break
        if cfg.target_kl is None:
            stats = self._diagnostics(data)
        stats[M.GRAD_NORM] = grad_norm_sum.item() / steps
        stats[M.EXPLAINED_VARIANCE] = explained_variance(batch.values, batch.returns)
        stats[M.LR] = lr
        stats[M.UPDATE_EPOCHS] = epochs
        return stats

    def _share(self, size: int) -> tuple[int, int, float]:
        """The samples [a, b) of a `size`-sample minibatch whose loss this learner computes, and the
        weight of that loss: the whole minibatch, weight 1."""
        return 0, size, 1.0

    def _sum_gradients(self) -> None:
        """Make `self.grad` the minibatch's whole gradient: it is already."""

    @torch.no_grad()
    def _diagnostics(self, data: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """The loss terms and the policy shift of the current parameters on the whole batch: one
        forward pass per update, rather than a handful of extra ops in every minibatch step."""
        obs, actions, old_logp, old_values, advantages, returns = data
        logp, entropy, values = self.net.evaluate(obs, actions)
        cfg = self.cfg
        if cfg.normalize_advantages and len(advantages) > 1:  # over the batch here, not per minibatch
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        terms = ppo_loss(logp, old_logp, advantages, values, old_values, returns, entropy,
                         clip=cfg.clip, vf_clip=cfg.vf_clip, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef)
        shift = policy_shift(logp, old_logp, cfg.clip)
        row = torch.stack([terms.policy_loss, terms.value_loss, terms.entropy, shift.approx_kl,
                           shift.clip_fraction]).tolist()
        return dict(zip((M.POLICY_LOSS, M.VALUE_LOSS, M.ENTROPY, M.APPROX_KL, M.CLIP_FRACTION), row, strict=True))

    def close(self) -> None:
        """Nothing to release in-process (a `learners.LearnerGroup` kills its actors)."""

    def finite(self) -> bool:
        """Whether every parameter is a finite number."""
        return bool(torch.isfinite(self.flat).all())

    # -- checkpoint state: tensors only, loadable with weights_only=True --------------------------

    def state_bytes(self) -> bytes:
        """Network, Adam state and torch RNG as `torch.save` bytes: what a checkpoint's learner.pt holds.

        The minibatch RNG is not among them: see `rng_state`.
        """
        buf = io.BytesIO()
        torch.save(
            {"model": self.net.state_dict(), "optimizer": self.adam.state_dict(),
             "torch_rng": torch.get_rng_state()},
            buf,
        )
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        """Restores `state_bytes()`; a RuntimeError when the saved network's shapes differ from these."""
        # on the CPU first: the RNG state must stay a CPU tensor; parameters and optimiser state are
        # copied to the learner's device by load_state_dict
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state["model"])
        self.adam.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])

    def rng_state(self) -> dict:
        """The minibatch-shuffling RNG's state, JSON-able (a checkpoint keeps it in state.json)."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restores the minibatch RNG from `rng_state()`, so the shuffles go on as they would have."""
        self.rng.bit_generator.state = state
