"""Adam on one flat parameter tensor (of one agent or of K agents side by side).

The learner keeps every parameter in one tensor and every gradient in another (the network's
parameters are views into them). On networks this small an update is bound by the number of tensor
operations, not their size: torch.optim.Adam costs ~10x this step in Python-side bookkeeping.
The arithmetic is torch.optim.Adam's (non-amsgrad, no weight decay); a test holds the two equal.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class FlatAdam:
    """Adam's update of one flat parameter tensor, in place, in a handful of tensor ops per step.

    The tensor may hold K agents' parameters (`agent_of` names each element's agent): each agent keeps
    its own step count, so an agent can sit out steps (`active`) and go on as if alone. The moment
    estimates have `param`'s shape and device; `betas` and `eps` are torch.optim.Adam's.
    """

    def __init__(self, param: torch.Tensor, eps: float, betas: tuple[float, float] = (0.9, 0.999),
                 agent_of: torch.Tensor | None = None, agents: int = 1):
        self.param, self.eps = param, eps
        self.beta1, self.beta2 = betas
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.agent_of = agent_of if agent_of is not None else torch.zeros_like(param, dtype=torch.long)
        self.steps = np.zeros(agents, np.int64)

    def step(self, grad: torch.Tensor, lr: float, active: np.ndarray | None = None) -> None:
        """One Adam step on `param`, in place, from `grad` (the same shape) at learning rate `lr`.

        `active`: (K,) bool, the agents that take this step (all when None); the others' parameters,
        moments and step counts stay as they are."""
        self.steps += 1 if active is None else active.astype(np.int64)
        if active is None and (self.steps == self.steps[0]).all():  # the usual case: scalars suffice
            n = int(self.steps[0])
            self.exp_avg.lerp_(grad, 1 - self.beta1)
            self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            bias1 = 1 - self.beta1**n
            bias2 = 1 - self.beta2**n
            denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(self.eps)
            self.param.addcdiv_(self.exp_avg, denom, value=-lr / bias1)
            return
        p = self.param
        keep = None if active is None else torch.as_tensor(active, device=p.device)[self.agent_of]
        avg = self.exp_avg.lerp(grad, 1 - self.beta1)
        sq = (self.exp_avg_sq * self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        if keep is not None:
            avg, sq = torch.where(keep, avg, self.exp_avg), torch.where(keep, sq, self.exp_avg_sq)
        self.exp_avg.copy_(avg)
        self.exp_avg_sq.copy_(sq)
        steps = np.maximum(self.steps, 1)  # (an agent that never stepped has zero moments: no move)
        bias1 = torch.as_tensor(1 - self.beta1**steps, dtype=p.dtype, device=p.device)[self.agent_of]
        bias2 = torch.as_tensor(1 - self.beta2**steps, dtype=p.dtype, device=p.device)[self.agent_of]
        update = self.exp_avg / ((self.exp_avg_sq.sqrt() / bias2.sqrt()).add_(self.eps)) * (lr / bias1)
        p.sub_(update if keep is None else update * keep)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The moment estimates and the agents' step counts, all tensors (loadable with weights_only=True).

        The estimates are the live tensors, not copies.
        """
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": torch.as_tensor(self.steps.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores a `state_dict()`, copying the moments into this optimiser's tensors (and device); a
        one-agent state saved before per-agent counts (a scalar count) is read too."""
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        steps = np.asarray(state["steps"].cpu().numpy(), np.int64)
        self.steps = np.broadcast_to(steps, self.steps.shape).copy()
