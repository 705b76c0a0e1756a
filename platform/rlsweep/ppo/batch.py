"""What a rollout worker sends back, and how the learner turns it into training samples."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rlsweep.ppo.gae import compute_gae


class Rollout(NamedTuple):
    """T steps of N envs from one worker (arrays are (T, N, ...)), plus what it saw along the way."""

    obs: np.ndarray  # observations as the policy saw them (normalised when normalisation is on)
    actions: np.ndarray  # unclipped actions
    logp: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray  # False on the autoreset step after an episode ended
    last_value: np.ndarray  # (N,) value of the observation after the last step
    episode_returns: list[float]  # episodes completed during these T steps
    episode_lengths: list[int]
    raw_obs: np.ndarray | None  # (T*N, D) raw observations, for the normaliser; None when it is off
    pid: int  # the process that sampled it


class TrainBatch(NamedTuple):
    """Flat valid samples, ready for minibatching."""

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray


def to_train_batch(rollouts: list[Rollout], gamma: float, lam: float) -> TrainBatch:
    """GAE on each worker's rollout, then the valid samples of all of them, in worker order."""
    parts = []
    for r in rollouts:
        adv, ret = compute_gae(r.rewards, r.values, r.terminated, r.truncated, r.valid, r.last_value, gamma, lam)
        m = r.valid
        parts.append((r.obs[m], r.actions[m], r.logp[m], r.values[m], adv[m], ret[m]))
    return TrainBatch(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, 0 no better than a constant."""
    var = float(np.var(returns))
    return float("nan") if var == 0 else 1.0 - float(np.var(returns - values)) / var
