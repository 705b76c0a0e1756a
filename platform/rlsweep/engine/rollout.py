"""Experience collection: a `Sampler` steps a seeded vector env with the numpy policy; an `Evaluator`
plays deterministic episodes on its own seeds. Neither knows about Ray: `workers.py` runs them in Ray
actors inside the trial's placement group, or in the calling process when `num_rollout_workers` is 0.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rlsweep import metrics as M
from rlsweep.config import ExperimentConfig
from rlsweep.envs import decode_value, encode_value, env_state, make_vector_env, set_env_state, space_info
from rlsweep.ppo.batch import Rollout
from rlsweep.ppo.normalization import RunningMeanStd
from rlsweep.ppo.policy import NumpyPolicy, Weights

_EVAL_STREAM = 0xE7A1


def _seed(*parts: int) -> int:
    """An independent 32-bit seed for each tuple of parts."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Sampler:
    """One worker's vector env, stepped `rollout_length` times per `sample` call.

    Episodes run on across calls; the autoreset step after an episode ends is marked invalid.
    """

    def __init__(self, cfg: ExperimentConfig, worker_index: int):
        self.cfg = cfg
        self.index = worker_index
        self.num_envs = cfg.rollouts.num_envs_per_worker
        self.policy = NumpyPolicy(space_info(cfg.env), cfg.policy.activation)
        self.env = make_vector_env(cfg.env, self.num_envs)
        self.rng = np.random.default_rng(_seed(cfg.seed, worker_index, 1))
        self._reset_envs(_seed(cfg.seed, worker_index, 0))

    def _reset_envs(self, seed: int) -> None:
        self.obs, _ = self.env.reset(seed=seed)
        self.prev_done = np.zeros(self.num_envs, bool)
        self.ep_return = np.zeros(self.num_envs, np.float64)
        self.ep_length = np.zeros(self.num_envs, np.int64)

    def sample(self, weights: Weights, obs_stats: RunningMeanStd | None) -> Rollout:
        """Steps every env `rollout_length` times with the policy `weights`.

        Args:
            weights: the learner's current network, as numpy arrays.
            obs_stats: observation statistics to normalise with, or None when normalisation is off.

        Returns:
            A `Rollout` of (T, N, ...) arrays, T = rollout_length and N = num_envs_per_worker, with the
            returns and lengths of the episodes that ended during these T steps. Episodes run on across
            calls; the autoreset step after an episode ends is marked invalid.
        """
        T, N = self.cfg.rollout_length, self.num_envs
        self.policy.load(weights)
        obs_buf = np.zeros((T, N, self.obs.shape[-1]), np.float32)
        raw_buf = np.zeros_like(obs_buf) if obs_stats is not None else None
        act_shape = (T, N) if self.policy.space.discrete else (T, N, self.policy.space.act_dim)
        actions = np.zeros(act_shape, np.int64 if self.policy.space.discrete else np.float32)
        logp, values, rewards = (np.zeros((T, N), np.float32) for _ in range(3))
        terminated, truncated, valid = (np.zeros((T, N), bool) for _ in range(3))
        ep_returns: list[float] = []
        ep_lengths: list[int] = []

        for t in range(T):
            obs = self.obs.reshape(N, -1)
            if raw_buf is not None:
                raw_buf[t] = obs
                obs = obs_stats.normalize(obs)
            a, lp, v = self.policy.act(obs, self.rng)
            obs_buf[t], actions[t], logp[t], values[t] = obs, a, lp, v
            valid[t] = ~self.prev_done
            self.obs, r, term, trunc, _ = self.env.step(self.policy.to_env(a))
            rewards[t], terminated[t], truncated[t] = r, term, trunc

            live = valid[t]
            self.ep_return[live] += r[live]
            self.ep_length[live] += 1
            done = term | trunc
            if done.any():
                ep_returns += self.ep_return[done].tolist()
                ep_lengths += self.ep_length[done].tolist()
                self.ep_return[done] = 0.0
                self.ep_length[done] = 0
            self.prev_done = done

        last_obs = self.obs.reshape(N, -1)
        if obs_stats is not None:
            last_obs = obs_stats.normalize(last_obs)
        return Rollout(
            obs=obs_buf, actions=actions, logp=logp, values=values, rewards=rewards,
            terminated=terminated, truncated=truncated, valid=valid,
            last_value=self.policy.value(last_obs).astype(np.float32),
            episode_returns=ep_returns, episode_lengths=ep_lengths,
            raw_obs=None if raw_buf is None else raw_buf.reshape(T * N, -1),
            pid=os.getpid(),
        )

    # -- checkpoint state (JSON-able) --------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint, read back by `set_state`.

        The envs' snapshot (None where `env_state` cannot take one), the current observations, the
        episode counters and the action-sampling RNG.
        """
        return {
            "env": env_state(self.env),
            "obs": encode_value(self.obs),
            "prev_done": encode_value(self.prev_done),
            "ep_return": encode_value(self.ep_return),
            "ep_length": encode_value(self.ep_length),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any], restart_seed: int) -> bool:
        """Restore; returns False when the env could not be restored and its episodes restarted."""
        self.rng.bit_generator.state = state["rng"]
        if state["env"] is None:
            self._reset_envs(_seed(self.cfg.seed, self.index, 2, restart_seed))
            return False
        set_env_state(self.env, state["env"])
        self.obs = decode_value(state["obs"])
        self.prev_done = decode_value(state["prev_done"])
        self.ep_return = decode_value(state["ep_return"])
        self.ep_length = decode_value(state["ep_length"])
        return True

    def reseed(self, restart_seed: int) -> None:
        """Fresh episodes on a seed of their own (a replacement for a worker that died)."""
        self.rng = np.random.default_rng(_seed(self.cfg.seed, self.index, 3, restart_seed))
        self._reset_envs(_seed(self.cfg.seed, self.index, 4, restart_seed))

    def close(self) -> None:
        """Closes the vector env."""
        self.env.close()


class Evaluator:
    """Plays `evaluation.episodes` episodes, one per sub-env, on seeds drawn from the iteration."""

    MAX_STEPS = 100_000  # for envs without a time limit

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.policy = NumpyPolicy(space_info(cfg.env), cfg.policy.activation)
        self.env = make_vector_env(cfg.env, cfg.evaluation.episodes)

    def evaluate(self, weights: Weights, obs_stats: RunningMeanStd | None, iteration: int) -> dict[str, float]:
        """Plays one episode per sub-env to its end (or MAX_STEPS).

        Args:
            weights: the policy to play, as numpy arrays.
            obs_stats: observation statistics to normalise with, or None.
            iteration: seeds the episodes, so an evaluation is repeatable and each iteration's differs.

        Returns:
            `eval_return_mean`, `eval_return_std` and `eval_length_mean` over the episodes.
        """
        n = self.cfg.evaluation.episodes
        self.policy.load(weights)
        rng = np.random.default_rng(_seed(self.cfg.seed, _EVAL_STREAM, iteration, 1))
        obs, _ = self.env.reset(seed=_seed(self.cfg.seed, _EVAL_STREAM, iteration, 0))
        returns = np.zeros(n)
        lengths = np.zeros(n, np.int64)
        finished = np.zeros(n, bool)
        for _ in range(self.MAX_STEPS):
            x = obs.reshape(n, -1)
            if obs_stats is not None:
                x = obs_stats.normalize(x)
            a = self.policy.greedy(x) if self.cfg.evaluation.deterministic else self.policy.act(x, rng)[0]
            obs, r, term, trunc, _ = self.env.step(self.policy.to_env(a))
            live = ~finished
            returns[live] += r[live]
            lengths[live] += 1
            finished |= term | trunc
            if finished.all():
                break
        return {
            M.EVAL_RETURN_MEAN: float(returns.mean()),
            M.EVAL_RETURN_STD: float(returns.std()),
            M.EVAL_LENGTH_MEAN: float(lengths.mean()),
        }

    def close(self) -> None:
        """Closes the vector env."""
        self.env.close()
