"""Generalised advantage estimation over a NEXT_STEP-autoreset rollout (pure numpy).

Arrays are (T, N): T steps of N envs. Step t is *invalid* when the previous step ended that env's
episode: the env ignored its action and reset. Its observation is the final observation of the
episode that just ended, so its value estimate is what a truncated step bootstraps from.

- terminated: the episode ended in a terminal state; nothing is bootstrapped.
- truncated: the episode was cut (time limit); the value of the final observation is bootstrapped.
- Either way the advantage does not carry across the episode boundary.
"""

from __future__ import annotations

import numpy as np


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    valid: np.ndarray,
    last_value: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns), both (T, N); zero at invalid steps.

    `last_value` is the value of the observation after the last step (the final observation when
    the last step ended an episode).
    """
    T = rewards.shape[0]
    adv = np.zeros_like(values, dtype=np.float32)
    next_value = last_value.astype(np.float32)
    next_adv = np.zeros_like(next_value)
    for t in range(T - 1, -1, -1):
        nonterminal = 1.0 - terminated[t]
        carry = 1.0 - np.logical_or(terminated[t], truncated[t])
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        adv[t] = np.where(valid[t], delta + gamma * lam * carry * next_adv, 0.0)
        next_value = values[t]
        next_adv = adv[t]
    returns = np.where(valid, adv + values, 0.0).astype(np.float32)
    return adv, returns
