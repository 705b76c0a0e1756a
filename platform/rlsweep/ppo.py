"""The PPO learner: epochs of shuffled minibatches over one batch, in torch."""

from __future__ import annotations

import io

import numpy as np
import torch

from rlsweep.batch import TrainBatch, explained_variance
from rlsweep.config import PolicyConfig, PPOConfig
from rlsweep.envs import SpaceInfo
from rlsweep.losses import ppo_loss
from rlsweep.networks import ActorCritic
from rlsweep.policy import Weights

_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")


class Learner:
    """Owns the network, the optimiser and the minibatch RNG."""

    def __init__(self, space: SpaceInfo, policy: PolicyConfig, ppo: PPOConfig, seed: int, device: str = "cpu"):
        self.cfg = ppo
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.net = ActorCritic(space, policy).to(self.device)
        self.params = list(self.net.parameters())  # walked every minibatch: look it up once
        self.optimizer = torch.optim.Adam(self.params, lr=ppo.lr, eps=ppo.adam_eps, fused=True)
        self.rng = np.random.default_rng([seed, 0x1EA7])

    def weights(self) -> Weights:
        return self.net.export_weights()

    def update(self, batch: TrainBatch, lr: float) -> dict[str, float]:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        data = [torch.as_tensor(v, device=self.device) for v in batch]
        n = len(batch.obs)
        bounds = np.linspace(0, n, cfg.num_minibatches + 1).astype(int)
        rows = []
        epochs = 0
        for _ in range(cfg.num_epochs):
            epochs += 1
            # one shuffle per epoch; minibatches are then contiguous slices (views, no gathers)
            perm = torch.as_tensor(self.rng.permutation(n), device=self.device)
            obs, actions, old_logp, old_values, advantages, returns = (x[perm] for x in data)
            epoch_rows = []
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                logp, entropy, values = self.net.evaluate(obs[lo:hi], actions[lo:hi])
                adv = advantages[lo:hi]
                if cfg.normalize_advantages and hi - lo > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                terms = ppo_loss(
                    logp, old_logp[lo:hi], adv, values, old_values[lo:hi], returns[lo:hi], entropy,
                    clip=cfg.clip, vf_clip=cfg.vf_clip, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef,
                )
                self.optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                epoch_rows.append(torch.stack([
                    terms.policy_loss.detach(), terms.value_loss.detach(), terms.entropy.detach(),
                    terms.approx_kl, terms.clip_fraction, grad_norm.detach(),
                ]))
            epoch = torch.stack(epoch_rows)
            rows.append(epoch)
            if cfg.target_kl is not None and epoch[:, _STATS.index("approx_kl")].mean().item() > cfg.target_kl:
                break
        means = torch.cat(rows).mean(dim=0).cpu()
        stats = dict(zip(_STATS, means.tolist(), strict=True))
        stats["explained_variance"] = explained_variance(batch.values, batch.returns)
        stats["lr"] = lr
        stats["update_epochs"] = epochs
        return stats

    # -- checkpoint state: tensors only, loadable with weights_only=True --------------------------

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
             "torch_rng": torch.get_rng_state()},
            buf,
        )
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        # on the CPU first: the RNG state must stay a CPU tensor; parameters and optimiser state are
        # copied to the learner's device by load_state_dict
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])

    def rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
