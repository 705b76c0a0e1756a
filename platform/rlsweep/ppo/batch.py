"""What a rollout worker sends back, and how the learner turns it into training samples."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rlsweep.ppo.gae import compute_gae


class Rollout(NamedTuple):
    """T steps of K agents' N envs each from one worker (arrays are (T, K, N, ...)), plus what it saw
    along the way."""

    obs: np.ndarray  # observations as the policy saw them (normalised when normalisation is on)
    actions: np.ndarray  # unclipped actions
    logp: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray  # False on the autoreset step after an episode ended
    last_value: np.ndarray  # (K, N) value of the observation after the last step
    episode_returns: list[list[float]]  # per agent, the episodes completed during these T steps
    episode_lengths: list[list[int]]
    raw_obs: np.ndarray | None  # (K, T*N, D) raw observations, for the normaliser; None when it is off
    pid: int  # the process that sampled it


class TrainBatch(NamedTuple):
    """Each agent's valid samples, flat and in sampling order, padded to the longest agent's count:
    arrays are (K, n, ...), and agent k's samples are the first counts[k] (the padding repeats its first
    sample: finite values wherever they are computed with, at weight 0)."""

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    counts: np.ndarray  # (K,) int


def to_train_batch(rollouts: list[Rollout], gamma: float, lam: float) -> TrainBatch:
    """GAE on each worker's rollout, then each agent's valid samples of all of them, in worker order."""
    k = rollouts[0].valid.shape[1]
    agents: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(k)]
    for r in rollouts:
        adv, ret = compute_gae(r.rewards, r.values, r.terminated, r.truncated, r.valid, r.last_value, gamma, lam)
        for i in range(k):
            m = r.valid[:, i]
            agents[i].append(tuple(x[:, i][m] for x in (r.obs, r.actions, r.logp, r.values, adv, ret)))
    columns = [[np.concatenate(cols) for cols in zip(*parts, strict=True)] for parts in agents]
    counts = np.array([len(cols[0]) for cols in columns])
    n = int(counts.max())
    padded = []
    for j in range(6):
        first = columns[0][j]
        out = np.zeros((k, n, *first.shape[1:]), first.dtype)
        for i, cols in enumerate(columns):  # padded with the agent's first sample: real values, weight 0
            out[i, : counts[i]] = cols[j]
            out[i, counts[i] :] = cols[j][0]
        padded.append(out)
    return TrainBatch(*padded, counts)


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, 0 no better than a constant."""
    var = float(np.var(returns))
    return float("nan") if var == 0 else 1.0 - float(np.var(returns - values)) / var
