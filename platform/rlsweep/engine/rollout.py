"""Experience collection: a `Sampler` steps seeded vector envs (one per agent of the trial) with the
numpy policy; an `Evaluator` plays deterministic episodes on its own seeds. Neither knows about Ray: `workers.py` runs them in Ray
actors inside the trial's placement group, or in the calling process when `num_rollout_workers` is 0.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rlsweep import metrics as M
from rlsweep.config import ExperimentConfig
from rlsweep.envs import (
    SCORE,
    SCORE_LENGTH,
    decode_value,
    encode_value,
    env_state,
    make_vector_env,
    set_env_state,
    space_info,
)
from rlsweep.ppo.batch import Rollout
from rlsweep.ppo.normalization import RunningMeanStd, normalize_each
from rlsweep.ppo.policy import NumpyPolicy, Weights

_EVAL_STREAM = 0xE7A1


def _seed(*parts: int) -> int:
    """An independent 32-bit seed for each tuple of parts."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _step(envs: list[Any], actions: np.ndarray, out: tuple[np.ndarray, ...]) -> tuple[tuple[np.ndarray, ...], list]:
    """Steps agent k's vector env with actions[k]: (observations, rewards, terminated, truncated),
    each with the agent axis in front, and the agents' infos. With several agents they are written
    into `out` (arrays of those shapes, reused from step to step: no stacking of K results on every
    step)."""
    if len(envs) == 1:  # the common case, as the env returned them
        obs, r, term, trunc, info = envs[0].step(actions[0])
        return (obs[None], r[None], term[None], trunc[None]), [info]
    infos = []
    for k, (env, a) in enumerate(zip(envs, actions, strict=True)):
        *values, info = env.step(a)
        for buffer, value in zip(out, values, strict=True):
            buffer[k] = value
        infos.append(info)
    return out, infos


class Sampler:
    """One worker's envs for each of the trial's K agents (a vector env of N per agent), stepped
    `rollout_length` times per `sample` call, every agent's policy in one batched forward pass.

    Agent k's envs and action draws are seeded from its own seed alone, as a one-agent sampler on that
    seed seeds them. Episodes run on across calls; the autoreset step after an episode ends is marked
    invalid.
    """

    def __init__(self, cfg: ExperimentConfig, worker_index: int):
        self.cfg = cfg
        self.index = worker_index
        self.seeds = cfg.agent_seeds
        self.num_envs = cfg.rollouts.num_envs_per_worker
        self.policy = NumpyPolicy(space_info(cfg.env), cfg.policy)
        self.envs = []
        try:
            for _ in self.seeds:
                self.envs.append(make_vector_env(cfg.env, self.num_envs, training=True))
        except BaseException:
            self.close()
            raise
        self.rngs = [np.random.default_rng(_seed(s, worker_index, 1)) for s in self.seeds]
        self._reset_envs([_seed(s, worker_index, 0) for s in self.seeds])

    def _reset_envs(self, seeds: list[int]) -> None:
        self.obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds, strict=True)])
        shape = (len(self.seeds), self.num_envs)
        self.prev_done = np.zeros(shape, bool)
        self.ep_return = np.zeros(shape, np.float64)
        self.ep_length = np.zeros(shape, np.int64)

    def sample(self, weights: Weights, obs_stats: list[RunningMeanStd] | None) -> Rollout:
        """Steps every env `rollout_length` times with the agents' policies `weights`.

        Args:
            weights: the learner's current networks, as numpy arrays.
            obs_stats: each agent's observation statistics to normalise with, or None when
                normalisation is off.

        Returns:
            A `Rollout` of (T, K, N, ...) arrays, T = rollout_length, K agents and N =
            num_envs_per_worker, with each agent's returns and lengths of the episodes that ended
            during these T steps (the scores the env reports, where it reports them: `envs.SCORE`).
            Observations are as the policy reads them: float32 for an mlp, the env's own (uint8
            pixels) for a cnn.
        """
        T, N, K = self.cfg.rollout_length, self.num_envs, len(self.seeds)
        policy = self.policy
        policy.load(weights)
        obs_buf = np.zeros((T, K, N, *policy.obs_shape), policy.obs_dtype)
        raw_buf = np.zeros_like(obs_buf) if obs_stats is not None else None
        space = policy.space
        act_shape = (T, K, N) if space.discrete else (T, K, N, space.act_dim)
        actions = np.zeros(act_shape, np.int64 if space.discrete else np.float32)
        logp, values, rewards = (np.zeros((T, K, N), np.float32) for _ in range(3))
        terminated, truncated, valid = (np.zeros((T, K, N), bool) for _ in range(3))
        ep_returns: list[list[float]] = [[] for _ in range(K)]
        ep_lengths: list[list[int]] = [[] for _ in range(K)]
        out = None  # several agents: each step lands in these (the observations in place: each step's are
        if K > 1:   # copied into the buffers before the envs step)
            self.obs = np.array(self.obs)
            out = (self.obs, np.zeros((K, N)), np.zeros((K, N), bool), np.zeros((K, N), bool))

        for t in range(T):
            obs = policy.prepare(self.obs)
            if raw_buf is not None:
                raw_buf[t] = obs
                obs = normalize_each(obs_stats, obs)
            a, lp, v = policy.act(obs, self.rngs)
            obs_buf[t], actions[t], logp[t], values[t] = obs, a, lp, v
            valid[t] = ~self.prev_done
            to_env = policy.to_env(a)
            (self.obs, r, terminated[t], truncated[t]), infos = _step(self.envs, to_env, out)
            rewards[t] = r

            live = valid[t]
            self.ep_return[live] += r[live]
            self.ep_length[live] += 1
            done = terminated[t] | truncated[t]
            if done.any():
                if SCORE in infos[0]:  # the env scores its episodes itself (a game's end is an episode's)
                    for k, info in enumerate(infos):
                        scored = ~np.isnan(info[SCORE])
                        ep_returns[k] += info[SCORE][scored].tolist()
                        ep_lengths[k] += info[SCORE_LENGTH][scored].tolist()
                else:
                    for k in np.flatnonzero(done.any(axis=1)):
                        ep_returns[k] += self.ep_return[k, done[k]].tolist()
                        ep_lengths[k] += self.ep_length[k, done[k]].tolist()
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0
            self.prev_done = done

        last_obs = policy.prepare(self.obs)
        if obs_stats is not None:
            last_obs = normalize_each(obs_stats, last_obs)
        return Rollout(
            obs=obs_buf, actions=actions, logp=logp, values=values, rewards=rewards,
            terminated=terminated, truncated=truncated, valid=valid,
            last_value=self.policy.value(last_obs).astype(np.float32),
            episode_returns=ep_returns, episode_lengths=ep_lengths,
            raw_obs=None if raw_buf is None else raw_buf.transpose(1, 0, 2, 3).reshape(K, T * N, -1),
            pid=os.getpid(),
        )

    # -- checkpoint state (JSON-able) --------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint, read back by `set_state`.

        Per agent, the envs' snapshot (None where `env_state` cannot take one) and the action-sampling
        RNG; the current observations and the episode counters, (K, N) arrays.
        """
        envs = [env_state(env) for env in self.envs]
        return {
            "envs": None if any(e is None for e in envs) else envs,
            "obs": encode_value(self.obs),
            "prev_done": encode_value(self.prev_done),
            "ep_return": encode_value(self.ep_return),
            "ep_length": encode_value(self.ep_length),
            "rngs": [rng.bit_generator.state for rng in self.rngs],
        }

    def set_state(self, state: dict[str, Any], restart_seed: int) -> bool:
        """Restore; returns False when the envs could not be restored and their episodes restarted.
        (A one-agent state saved before the agent axis is read too.)"""
        if "rngs" not in state:  # the one-agent layout: an agent axis of 1 in front of each array
            envs = None if state["env"] is None else [state["env"]]
            state = {"envs": envs, "rngs": [state["rng"]],
                     **{k: {**state[k], "shape": [1, *state[k]["shape"]]}
                        for k in ("obs", "prev_done", "ep_return", "ep_length")}}
        for rng, s in zip(self.rngs, state["rngs"], strict=True):
            rng.bit_generator.state = s
        if state["envs"] is None:
            self._reset_envs([_seed(s, self.index, 2, restart_seed) for s in self.seeds])
            return False
        for env, s in zip(self.envs, state["envs"], strict=True):
            set_env_state(env, s)
        self.obs = decode_value(state["obs"])
        self.prev_done = decode_value(state["prev_done"])
        self.ep_return = decode_value(state["ep_return"])
        self.ep_length = decode_value(state["ep_length"])
        return True

    def reseed(self, restart_seed: int) -> None:
        """Fresh episodes on seeds of their own (a replacement for a worker that died)."""
        self.rngs = [np.random.default_rng(_seed(s, self.index, 3, restart_seed)) for s in self.seeds]
        self._reset_envs([_seed(s, self.index, 4, restart_seed) for s in self.seeds])

    def close(self) -> None:
        """Closes the vector envs."""
        for env in self.envs:
            env.close()


class Evaluator:
    """Plays `evaluation.episodes` episodes per agent, one per sub-env, on seeds drawn from the agent's
    seed and the iteration."""

    MAX_STEPS = 100_000  # for envs without a time limit

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.seeds = cfg.agent_seeds
        self.policy = NumpyPolicy(space_info(cfg.env), cfg.policy)
        self.envs = []
        try:
            for _ in self.seeds:
                self.envs.append(make_vector_env(cfg.env, cfg.evaluation.episodes, training=False))
        except BaseException:
            self.close()
            raise

    def evaluate(self, weights: Weights, obs_stats: list[RunningMeanStd] | None,
                 iteration: int) -> dict[str, list[float]]:
        """Plays one episode per sub-env to its end (or MAX_STEPS), for each agent.

        Args:
            weights: the agents' policies, as numpy arrays.
            obs_stats: each agent's observation statistics to normalise with, or None.
            iteration: seeds the episodes, so an evaluation is repeatable and each iteration's differs.

        Returns:
            Per agent (lists of K): `eval_return_mean`, `eval_return_std` and `eval_length_mean` over
            its episodes.
        """
        n, k = self.cfg.evaluation.episodes, len(self.seeds)
        self.policy.load(weights)
        rngs = [np.random.default_rng(_seed(s, _EVAL_STREAM, iteration, 1)) for s in self.seeds]
        obs = np.stack([env.reset(seed=_seed(s, _EVAL_STREAM, iteration, 0))[0]
                        for env, s in zip(self.envs, self.seeds, strict=True)])
        returns = np.zeros((k, n))
        lengths = np.zeros((k, n), np.int64)
        finished = np.zeros((k, n), bool)
        rewards, ended = np.zeros((k, n)), np.zeros((k, n), bool)  # each step's, every agent's at once
        playing = range(k)
        for _ in range(self.MAX_STEPS):
            x = self.policy.prepare(obs)
            if obs_stats is not None:
                x = normalize_each(obs_stats, x)
            a = self.policy.greedy(x) if self.cfg.evaluation.deterministic else self.policy.act(x, rngs)[0]
            a = self.policy.to_env(a)
            for i in playing:  # an agent whose episodes all ended steps no more
                o, r, term, trunc, _ = self.envs[i].step(a[i])
                obs[i], rewards[i] = o, r
                np.logical_or(term, trunc, out=ended[i])
            live = ~finished  # (the agents that stepped no more are all finished: their rows count nothing)
            returns += np.where(live, rewards, 0.0)
            lengths += live
            finished |= ended
            done = finished.all(axis=1)
            if done.all():
                break
            if done.any():
                playing = np.flatnonzero(~done).tolist()
        return {
            M.EVAL_RETURN_MEAN: returns.mean(axis=1).tolist(),
            M.EVAL_RETURN_STD: returns.std(axis=1).tolist(),
            M.EVAL_LENGTH_MEAN: lengths.mean(axis=1).tolist(),
        }

    def close(self) -> None:
        """Closes the vector envs."""
        for env in self.envs:
            env.close()
