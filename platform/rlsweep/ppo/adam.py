"""Adam on one flat parameter tensor.

The learner keeps every parameter in one tensor and every gradient in another (the network's
parameters are views into them). On networks this small an update is bound by the number of tensor
operations, not their size: torch.optim.Adam costs ~10x this step in Python-side bookkeeping.
The arithmetic is torch.optim.Adam's (non-amsgrad, no weight decay); a test holds the two equal.
"""

from __future__ import annotations

import math

import torch


class FlatAdam:
    """Adam's update of one flat parameter tensor, in place, in a handful of tensor ops per step.

    The moment estimates have `param`'s shape and device; `betas` and `eps` are torch.optim.Adam's.
    """

    def __init__(self, param: torch.Tensor, eps: float, betas: tuple[float, float] = (0.9, 0.999)):
        self.param, self.eps = param, eps
        self.beta1, self.beta2 = betas
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = 0

    def step(self, grad: torch.Tensor, lr: float) -> None:
        """One Adam step on `param`, in place, from `grad` (the same shape) at learning rate `lr`."""
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias1 = 1 - self.beta1**self.steps
        bias2 = 1 - self.beta2**self.steps
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-lr / bias1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The moment estimates and the step count, all tensors (loadable with weights_only=True).

        The estimates are the live tensors, not copies.
        """
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores a `state_dict()`, copying the moments into this optimiser's tensors (and device)."""
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps = int(state["steps"])
