"""The PPO learner: epochs of shuffled minibatches over one batch, in torch, for K agents at once."""

from __future__ import annotations

import io

import numpy as np
import torch

from rlsweep import metrics as M
from rlsweep.config import PolicyConfig, PPOConfig
from rlsweep.envs import SpaceInfo
from rlsweep.ppo import networks
from rlsweep.ppo.adam import FlatAdam
from rlsweep.ppo.batch import TrainBatch, explained_variance
from rlsweep.ppo.losses import policy_shift, ppo_loss
from rlsweep.ppo.networks import upgrade_state_dict
from rlsweep.ppo.policy import Weights


def _memory_order(p: torch.Tensor) -> torch.Tensor:
    """`p` permuted to the order its elements lie in the flat parameter tensor: a convolution's weight
    (out, in, kh, kw) channels last, as (out, kh, kw, in); any other as it is."""
    return p.permute(0, 2, 3, 1) if p.dim() == 4 else p


def _view(flat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A view of `flat` shaped as `p`, laid out as `_memory_order` says."""
    if p.dim() == 4:
        out, fan_in, kh, kw = p.shape
        return flat.view(out, kh, kw, fan_in).permute(0, 3, 1, 2)
    return flat.view_as(p)


class Learner:
    """Owns the K agents' stacked network, their optimiser and their minibatch RNGs; `update` is PPO's
    update of every agent in one process.

    Agent k (seed `seeds[k]`) is trained exactly as a one-agent learner on that seed would train it:
    its own initialisation, minibatch shuffles, advantage normalisation, gradient clipping (its own
    norm) and Adam state. The agents share only the tensor ops.

    Two hooks let a group of learners split each minibatch between them (`engine.data_parallel`
    overrides them): `_share` (which slots of a minibatch this learner computes the loss on: all of
    them here) and `_sum_gradients` (nothing to sum here).
    """

    def __init__(self, space: SpaceInfo, policy: PolicyConfig, ppo: PPOConfig, seeds: list[int], device: str = "cpu"):
        self.cfg = ppo
        self.k = len(seeds)
        self.device = torch.device(device)
        torch.manual_seed(seeds[0])
        self.net = networks.make(space, policy, seeds).to(self.device)
        # every parameter is a view into one flat tensor and every gradient into another, so that
        # zeroing, clipping and the Adam step are a few tensor ops each (see adam.py); `agent_of` names
        # each element's agent (a parameter's leading axis is the agents', or 2 per agent: actor, critic)
        # (a convolution's weight lies channels last, as its input does: oneDNN then reorders neither)
        params = list(self.net.parameters())
        self.flat = torch.cat([_memory_order(p.detach()).reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        owners = []
        offset = 0
        for p in params:
            n = p.numel()
            p.data = _view(self.flat[offset : offset + n], p)
            p.grad = _view(self.grad[offset : offset + n], p)  # backward accumulates into it in place
            rows = p.shape[0]
            owners.append(torch.arange(rows).repeat_interleave(n // rows) // (rows // self.k))
            offset += n
        self.agent_of = torch.cat(owners).to(self.device)
        self.adam = FlatAdam(self.flat, eps=ppo.adam_eps, agent_of=self.agent_of, agents=self.k)
        self.rngs = [np.random.default_rng([seed, 0x1EA7]) for seed in seeds]

    def set_ppo(self, ppo: PPOConfig) -> None:
        """The update's settings from now on (a schedule's or PBT's values); the network, the batch size
        and Adam's epsilon stay as they were built."""
        self.cfg = ppo

    def settings(self) -> PPOConfig:
        """The update's settings this learner runs with: what it was built with or last `set_ppo`."""
        return self.cfg

    def weights(self) -> Weights:
        """The current networks as numpy float32 copies, for the workers' `policy.NumpyPolicy`."""
        return self.net.export_weights()

    def _minibatches(self, counts: np.ndarray,
                     active: np.ndarray | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One epoch's shuffled minibatches of every agent, as slots: (indices, weights), both
        (num_minibatches, K, S), the (M, K, 1) factor that makes a weighted variance unbiased, and
        where an agent's minibatch holds a single sample (M, K, 1) (its advantages are left as they
        are, as a one-agent learner leaves them; None when there is no such minibatch).

        Agent k draws its own permutation of its counts[k] samples and cuts it into num_minibatches
        contiguous minibatches, as a one-agent learner does; S is the largest of them. A slot beyond an
        agent's minibatch has weight 0; the others weigh 1 / (its minibatch's size). An agent not
        `active` (target_kl has stopped its epochs) draws nothing: its RNG stays where a one-agent
        learner's, which stops drawing, leaves it (its slots then hold its samples in order, unused).
        """
        m = self.cfg.num_minibatches
        bounds = [np.linspace(0, n, m + 1).astype(int) for n in counts]
        sizes = np.stack([np.diff(b) for b in bounds], axis=1)  # (M, K)
        slots = int(sizes.max())
        s = np.arange(slots)
        index = np.zeros((m, self.k, slots), np.int64)
        weight = np.zeros((m, self.k, slots), np.float32)
        for i, (n, b) in enumerate(zip(counts, bounds, strict=True)):
            perm = self.rngs[i].permutation(int(n)) if active is None or active[i] else np.arange(int(n))
            inside = s[None, :] < sizes[:, i, None]
            index[:, i] = np.where(inside, perm[np.minimum(b[:-1, None] + s[None, :], max(int(n) - 1, 0))], 0)
            weight[:, i] = inside / np.maximum(sizes[:, i, None], 1)
        unbias = torch.as_tensor(np.where(sizes > 1, sizes / np.maximum(sizes - 1.0, 1.0), 1.0), dtype=torch.float32,
                                 device=self.device).unsqueeze(-1)
        alone = None if sizes.min() > 1 else torch.as_tensor(sizes < 2, device=self.device).unsqueeze(-1)
        return (torch.as_tensor(index, device=self.device), torch.as_tensor(weight, device=self.device), unbias,
                alone)

    def update(self, batch: TrainBatch, lr: float) -> dict[str, list[float]]:
        """The PPO epochs over one batch: `num_epochs` passes of shuffled minibatches, each a clipped
        surrogate loss per agent (`losses.ppo_loss`), per-agent gradient clipping and an Adam step.

        Args:
            batch: each agent's valid samples, (K, n, ...) padded arrays, as `batch.to_train_batch`
                makes them.
            lr: the learning rate for every step of this update (see `training.learning_rate`).

        Returns:
            Per agent (lists of K), the metrics named in `metrics.py`: the loss terms and policy shift of
            the updated policy on the whole batch, the mean gradient norm before clipping, the critic's
            explained variance, the lr and the epochs run (fewer than `num_epochs` when `target_kl`
            stops them: an agent whose policy moved too far sits out the remaining epochs).
        """
        cfg = self.cfg
        # (arrays that arrive through Ray's object store are read-only: torch gets a copy of those)
        data = tuple(torch.as_tensor(v if v.flags.writeable else v.copy(), device=self.device) for v in batch[:6])
        counts = np.asarray(batch.counts)
        agents = torch.arange(self.k, device=self.device).view(1, self.k, 1)
        grad_norm_sum = torch.zeros(self.k, device=self.device)
        steps = np.zeros(self.k, np.int64)
        epochs = np.zeros(self.k, np.int64)
        active: np.ndarray | None = None  # None: every agent (target_kl has stopped none yet)
        stats: dict[str, np.ndarray] = {}
        for _ in range(cfg.num_epochs):
            epochs += 1 if active is None else active
            index, weights, unbias, alone = self._minibatches(counts, active)
            # one gather per epoch; each minibatch is then a contiguous (K, S, ...) view
            mb_obs, mb_act, mb_logp, mb_val, mb_adv, mb_ret = (x[agents, index] for x in data)
            for j in range(cfg.num_minibatches):
                adv, w = mb_adv[j], weights[j]
                if cfg.normalize_advantages:  # over each agent's whole minibatch
                    mean = (adv * w).sum(-1, keepdim=True)
                    std = (((adv - mean).pow(2) * w).sum(-1, keepdim=True) * unbias[j]).sqrt()
                    normalized = (adv - mean) / (std + 1e-8)
                    adv = normalized if alone is None else torch.where(alone[j], adv, normalized)
                a, b = self._share(w.shape[1])
                self.grad.zero_()
                if b > a:
                    logp, entropy, values = self.net.evaluate(mb_obs[j, :, a:b], mb_act[j, :, a:b], cfg.ent_coef != 0)
                    terms = ppo_loss(
                        logp, mb_logp[j, :, a:b], adv[:, a:b], values, mb_val[j, :, a:b], mb_ret[j, :, a:b],
                        entropy, w[:, a:b], clip=cfg.clip, vf_clip=cfg.vf_clip, vf_coef=cfg.vf_coef,
                        ent_coef=cfg.ent_coef,
                    )
                    terms.loss.backward()
                self._sum_gradients()
                if self.k == 1:
                    grad_norm = torch.linalg.vector_norm(self.grad).view(1)
                else:  # each agent's own norm
                    grad_norm = torch.zeros(self.k, device=self.device).index_add_(
                        0, self.agent_of, self.grad * self.grad).sqrt_()
                scale = torch.clamp(cfg.max_grad_norm / (grad_norm + 1e-6), max=1.0)
                self.grad.mul_(scale[self.agent_of] if self.k > 1 else scale)
                self.adam.step(self.grad, lr, active)
                grad_norm_sum += grad_norm if active is None else grad_norm * torch.as_tensor(active, device=self.device)
                steps += 1 if active is None else active
            if cfg.target_kl is not None:  # stats of the policies as they stand after this epoch
                now = self._diagnostics(data, counts)
                live = np.ones(self.k, bool) if active is None else active
                for key, values in now.items():  # an agent's stats are those of its last epoch
                    stats[key] = np.where(live, values, stats.get(key, values))
                active = live & (now[M.APPROX_KL] <= cfg.target_kl)
                if not active.any():
                    break
        if cfg.target_kl is None:
            stats = self._diagnostics(data, counts)
        stats[M.GRAD_NORM] = grad_norm_sum.cpu().numpy() / np.maximum(steps, 1)
        stats[M.EXPLAINED_VARIANCE] = np.array([explained_variance(batch.values[i, :c], batch.returns[i, :c])
                                                for i, c in enumerate(counts)])
        stats[M.LR] = np.full(self.k, lr)
        stats[M.UPDATE_EPOCHS] = epochs.astype(np.float64)
        return {key: np.asarray(v, np.float64).tolist() for key, v in stats.items()}

    def _share(self, slots: int) -> tuple[int, int]:
        """The slots [a, b) of a minibatch whose loss this learner computes: all of them. (The sample
        weights are the whole minibatch's, so shares' losses sum to the minibatch's.)"""
        return 0, slots

    def _sum_gradients(self) -> None:
        """Make `self.grad` the minibatch's whole gradient: it is already."""

    @torch.no_grad()
    def _diagnostics(self, data: tuple[torch.Tensor, ...], counts: np.ndarray) -> dict[str, np.ndarray]:
        """The loss terms and the policy shift of the current parameters on the whole batch, per agent:
        one forward pass per update, rather than a handful of extra ops in every minibatch step."""
        obs, actions, old_logp, old_values, advantages, returns = data
        n = torch.tensor(counts, device=self.device, dtype=torch.float32).unsqueeze(-1)
        weights = (torch.arange(obs.shape[1], device=self.device) < n).float() / n
        logp, entropy, values = self.net.evaluate(obs, actions)
        cfg = self.cfg
        if cfg.normalize_advantages and counts.min() > 1:  # over the batch here, not per minibatch
            mean = (advantages * weights).sum(-1, keepdim=True)
            std = (((advantages - mean).pow(2) * weights).sum(-1, keepdim=True) * n / (n - 1)).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
        terms = ppo_loss(logp, old_logp, advantages, values, old_values, returns, entropy, weights,
                         clip=cfg.clip, vf_clip=cfg.vf_clip, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef)
        shift = policy_shift(logp, old_logp, weights, cfg.clip)
        rows = torch.stack([terms.policy_loss, terms.value_loss, terms.entropy, shift.approx_kl,
                            shift.clip_fraction]).cpu().numpy().astype(np.float64)
        return dict(zip((M.POLICY_LOSS, M.VALUE_LOSS, M.ENTROPY, M.APPROX_KL, M.CLIP_FRACTION), rows, strict=True))

    def close(self) -> None:
        """Nothing to release in-process (a `learners.LearnerGroup` kills its actors)."""

    def finite(self) -> list[bool]:
        """Per agent, whether every one of its parameters is a finite number."""
        bad = torch.zeros(self.k, device=self.device).index_add_(0, self.agent_of, (~torch.isfinite(self.flat)).float())
        return (bad == 0).tolist()

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
        model, optimizer = state["model"], state["optimizer"]
        self.net.load_state_dict(upgrade_state_dict(model))
        if "pi_head.weight" in model:  # saved before the agent axis: its flat moments follow its parameters
            optimizer = {**optimizer,
                         **{key: self._upgrade_flat(model, optimizer[key]) for key in ("exp_avg", "exp_avg_sq")}}
        self.adam.load_state_dict(optimizer)
        torch.set_rng_state(state["torch_rng"])

    def _upgrade_flat(self, old_model: dict[str, torch.Tensor], flat: torch.Tensor) -> torch.Tensor:
        """A flat tensor laid out as the parameters of a network saved before the agent axis (in its
        state dict's order and shapes: log_std first, heads as nn.Linear) in this network's layout."""
        parts, offset = {}, 0
        for name, p in old_model.items():
            parts[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        new = upgrade_state_dict(parts)
        return torch.cat([new[name].reshape(-1) for name, _ in self.net.named_parameters()])

    def rng_state(self) -> list[dict]:
        """The agents' minibatch-shuffling RNG states, JSON-able (a checkpoint keeps them in state.json)."""
        return [rng.bit_generator.state for rng in self.rngs]

    def set_rng_state(self, state: list[dict] | dict) -> None:
        """Restores the minibatch RNGs from `rng_state()`, so the shuffles go on as they would have (a
        one-agent checkpoint from before the seed axis holds one state, not a list)."""
        for rng, s in zip(self.rngs, state if isinstance(state, list) else [state], strict=True):
            rng.bit_generator.state = s
