"""One PPO training run, iteration by iteration, with no Ray and no MLflow in it.

`Training` owns everything that changes while a policy trains: the learner (network, optimiser,
minibatch RNG), the worker group, the observation statistics, the counters, the latest episode and
evaluation means. One `iterate()` is the whole PPO spine, read top to bottom:

    weights -> workers sample -> observation statistics -> GAE -> PPO epochs -> counters -> evaluation

`state()` / `load_state()` are everything a checkpoint holds, so a restored run continues exactly as
the uninterrupted one would have. The Tune Trainable (`trainable.py`) only adapts this to Tune.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from rlsweep import metrics as M
from rlsweep.config import ConfigError, ExperimentConfig, PPOConfig
from rlsweep.engine import schedules
from rlsweep.engine.workers import WorkerGroup
from rlsweep.envs import space_info
from rlsweep.ppo.batch import to_train_batch
from rlsweep.ppo.normalization import RunningMeanStd

if TYPE_CHECKING:
    from rlsweep.ppo.learner import Learner

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training met a NaN or an infinity: the trial cannot go on, and says where it came from.

    `metrics`: what the iteration that met it measured (NaN included), for the run's curves."""

    def __init__(self, message: str, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.metrics = metrics or {}


def check_rollouts(rollouts: list[Any], iteration: int, seeds: list[int]) -> None:
    """NonFiniteError naming the iteration, the worker, the agent's seed and the quantity when the env
    returned a NaN or an infinity (NaN flows through GAE and torch without an exception: nothing else
    would stop it)."""
    for i, r in enumerate(rollouts):
        for k, seed in enumerate(seeds):
            for name, values in (("rewards", r.rewards[:, k][r.valid[:, k]]), ("observations", r.obs[:, k])):
                bad = ~np.isfinite(values)
                if bad.any():
                    agent = f", agent seed {seed}" if len(seeds) > 1 else ""
                    raise NonFiniteError(f"iteration {iteration}: the env returned non-finite {name} "
                                         f"({int(bad.sum())} of {bad.size} on worker {i}{agent})")


def check_update(stats: dict[str, list[float]], parameters_finite: list[bool], iteration: int,
                 seeds: list[int]) -> None:
    """NonFiniteError naming the iteration, the agent's seed and the first loss term, the gradient norm
    or the parameters that an update left non-finite."""
    for k, seed in enumerate(seeds):
        agent = f" of agent seed {seed}" if len(seeds) > 1 else ""
        for key in (M.POLICY_LOSS, M.VALUE_LOSS, M.ENTROPY, M.APPROX_KL, M.GRAD_NORM):
            if key in stats and not math.isfinite(v := stats[key][k]):
                raise NonFiniteError(f"iteration {iteration}: {key}{agent} became {v} in the PPO update "
                                     "(lr too high or a diverging loss)")
        if not parameters_finite[k]:
            raise NonFiniteError(f"iteration {iteration}: the network's parameters{agent} became non-finite in the "
                                 "PPO update (lr too high or a diverging loss)")


def learning_rate(ppo: PPOConfig, env_steps: int, total_env_steps: int | None) -> float:
    """The learning rate for the update after `env_steps` steps: `ppo.lr`, or with `ppo.anneal_lr` that
    rate decayed linearly to 0 at `total_env_steps` (and held at 0 beyond it)."""
    if not ppo.anneal_lr:
        return ppo.lr
    if total_env_steps is None:
        raise ValueError("annealing needs a horizon (stop.env_steps)")
    return ppo.lr * max(0.0, 1.0 - env_steps / total_env_steps)


class Training:
    """A PPO run of the trial's K agents (one per seed in `cfg.agent_seeds`), trained side by side:
    `iterate()` for one sample-and-update iteration, `state()`/`load_state()` for checkpoints.

    Every agent is trained as a one-agent run on its seed would train it; what they share is the
    batched work. Metrics are reported per agent and summarised over agents (`metrics.summarise`).

    `workers` should be made before this (see `workers.make_workers`): building the learner imports
    torch, which remote workers' processes can overlap with their own start-up.
    """

    def __init__(self, cfg: ExperimentConfig, workers: WorkerGroup, learner: Learner | None = None):
        """`learner`: where the update runs (`learners.LearnerGroup`); by default a `ppo.Learner` here."""
        import torch  # here, not at import: the driver and the rollout actors never need torch

        from rlsweep.ppo.learner import Learner

        self.cfg = cfg
        self.seeds = cfg.agent_seeds
        self.workers = workers
        torch.set_num_threads(cfg.resources.torch_threads)
        space = space_info(cfg.env)
        if learner is None:
            device = "cuda" if cfg.resources.learner_gpus > 0 else "cpu"
            learner = Learner(space, cfg.policy, cfg.ppo, self.seeds, device)
        self.learner = learner
        k = len(self.seeds)
        self.obs_stats = [RunningMeanStd.zeros(space.obs_dim) for _ in self.seeds] \
            if cfg.policy.normalize_observations else None
        self.iterations = 0
        self.env_steps = 0  # per agent
        self.episodes = 0  # all agents'
        # per agent: means over the episodes that ended in the latest iteration that ended any (RLlib's sense)
        self.episode_means = {M.EPISODE_RETURN_MEAN: [math.nan] * k, M.EPISODE_LENGTH_MEAN: [math.nan] * k}
        self.last_eval = {m: [math.nan] * k for m in (M.EVAL_RETURN_MEAN, M.EVAL_RETURN_STD, M.EVAL_LENGTH_MEAN)}
        self.last_rollout_pids: list[int] = []
        self.train_time_s = 0.0  # the iterations' own time, summed (restores continue it)
        # per agent: env steps and time when its evaluation first met the target, else None
        self.reached: list[dict[str, float] | None] = [None] * k
        # the update's values over the run (`schedules.History`); reported where they can change
        self.history: schedules.History = []
        self.tracks_values = bool(cfg.schedules) or cfg.sweep.scheduler == "pbt"
        self._follow_schedules()

    def set_ppo(self, ppo: PPOConfig) -> None:
        """The update's settings from now on (the learner's too), recorded in `history` at the current
        env step."""
        if ppo != self.cfg.ppo:
            self.cfg = self.cfg.model_copy(update={"ppo": ppo})
            self.learner.set_ppo(ppo)
        self.history = schedules.extend(self.history, self.env_steps, schedules.in_use(ppo))

    def _follow_schedules(self) -> None:
        self.set_ppo(schedules.scheduled(self.cfg.ppo, self.cfg.schedules, self.env_steps))

    def values_in_use(self) -> dict[str, float]:
        """`hp/<key>` -> the value the learner runs with, for every key that may change while training
        (read back from the learner, not from the config); {} where none can change."""
        if not self.tracks_values:
            return {}
        return {M.hyperparameter(k): v for k, v in schedules.in_use(self.learner.settings()).items()
                if isinstance(v, int | float)}

    def target_metrics(self) -> dict[str, list[float]]:
        """Per agent, `env_steps_to_target` and `time_to_target_s` (see metrics.py), and `seeds_at_target`
        (how many agents have reached it); {} without stop.target_return."""
        stop = self.cfg.stop
        if stop.target_return is None:
            return {}
        budget = {M.ENV_STEPS_TO_TARGET: float(stop.env_steps if stop.env_steps is not None else self.env_steps),
                  M.TIME_TO_TARGET_S: float(stop.time_s if stop.time_s is not None else self.train_time_s)}
        rows = [budget if r is None else r for r in self.reached]
        return {key: [row[key] for row in rows] for key in budget}

    def iterate(self) -> dict[str, float]:
        """Samples one batch per agent, updates the policies on them, evaluates when due; returns the
        metrics (names from `metrics.py`)."""
        if self.cfg.schedules:  # (otherwise the values change only with a new config: a PBT copy's restore)
            self._follow_schedules()
        cfg = self.cfg
        t0 = time.perf_counter()
        # 1. collect: every worker steps its envs with the current policies
        rollouts = self.workers.sample(self.learner.weights(), self.obs_stats)
        t1 = time.perf_counter()
        # 2. observation statistics: updated after sampling, so this batch was seen with the old ones
        if self.obs_stats is not None:
            for r in rollouts:
                self.obs_stats = [s.merge(RunningMeanStd.of(raw)) for s, raw in zip(self.obs_stats, r.raw_obs, strict=True)]
        # 3. advantages (GAE per worker) and 4. the PPO epochs, with NaN and infinities stopped on entry
        # and on exit, naming where they came from
        stats: dict[str, list[float]] = {}
        try:
            check_rollouts(rollouts, self.iterations + 1, self.seeds)
            batch = to_train_batch(rollouts, cfg.ppo.gamma, cfg.ppo.gae_lambda)
            stats = self.learner.update(batch, learning_rate(cfg.ppo, self.env_steps, cfg.stop.env_steps))
            check_update(stats, self.learner.finite(), self.iterations + 1, self.seeds)
        except NonFiniteError as e:  # what this iteration saw goes with the error (the curve shows it)
            e.metrics = {M.ENV_STEPS: self.env_steps + cfg.ppo.train_batch_size,
                         **M.summarise({**self._episode_means(rollouts), **stats}, self.seeds)}
            raise
        t2 = time.perf_counter()
        # 5. counters and episode means
        self.iterations += 1
        self.env_steps += cfg.ppo.train_batch_size
        self.last_rollout_pids = [r.pid for r in rollouts]
        self.episodes += sum(len(x) for r in rollouts for x in r.episode_returns)
        for key, values in self._episode_means(rollouts).items():  # an agent with no episode keeps its last
            self.episode_means[key] = [old if v != v else v for old, v in zip(self.episode_means[key], values, strict=True)]
        # 6. evaluation of the updated policies (the ones a checkpoint after this iteration holds)
        t_eval = 0.0
        evaluated = bool(cfg.evaluation.interval) and self.iterations % cfg.evaluation.interval == 0
        if evaluated:
            t3 = time.perf_counter()
            self.last_eval = self.workers.evaluate(self.learner.weights(), self.obs_stats, self.iterations)
            if not all(math.isfinite(v) for v in self.last_eval[M.EVAL_RETURN_MEAN]):
                raise NonFiniteError(f"iteration {self.iterations}: the evaluation env returned non-finite rewards",
                                     {M.ENV_STEPS: self.env_steps,
                                      **M.summarise({**self.episode_means, **stats}, self.seeds)})
            t_eval = time.perf_counter() - t3
        total = time.perf_counter() - t0
        self.train_time_s += total
        target = cfg.stop.target_return
        if evaluated and target is not None:
            for k, value in enumerate(self.last_eval[M.EVAL_RETURN_MEAN]):
                if self.reached[k] is None and value >= target:
                    self.reached[k] = {M.ENV_STEPS_TO_TARGET: float(self.env_steps),
                                       M.TIME_TO_TARGET_S: self.train_time_s}
        result = {
            M.ENV_STEPS: self.env_steps,
            M.EPISODES: self.episodes,
            **M.summarise({**self.episode_means, **self.last_eval, **stats, **self.target_metrics()}, self.seeds),
            M.TIME_SAMPLE_S: t1 - t0,
            M.TIME_LEARN_S: t2 - t1,
            M.TIME_EVAL_S: t_eval,
            M.TIME_OTHER_S: total - (t2 - t0) - t_eval,
            M.ENV_STEPS_PER_S: cfg.ppo.train_batch_size * len(self.seeds) / total,
            M.WORKERS_REPLACED: self.workers.replaced,
            **self.values_in_use(),
        }
        if self.tracks_values:
            result[M.HP_HISTORY] = json.dumps(self.history)
        if target is not None:
            result[M.SEEDS_AT_TARGET] = sum(r is not None for r in self.reached)
        return result

    def _episode_means(self, rollouts: list[Any]) -> dict[str, list[float]]:
        """Per agent, the mean return and length of the episodes that ended in `rollouts` (NaN for an
        agent none of whose episodes ended)."""
        out: dict[str, list[float]] = {M.EPISODE_RETURN_MEAN: [], M.EPISODE_LENGTH_MEAN: []}
        for k in range(len(self.seeds)):
            returns = [x for r in rollouts for x in r.episode_returns[k]]
            lengths = [x for r in rollouts for x in r.episode_lengths[k]]
            out[M.EPISODE_RETURN_MEAN].append(float(np.mean(returns)) if returns else math.nan)
            out[M.EPISODE_LENGTH_MEAN].append(float(np.mean(lengths)) if lengths else math.nan)
        return out

    # -- checkpoint state ---------------------------------------------------------------------------

    def state(self) -> tuple[bytes, dict[str, Any]]:
        """(the learner's tensors as `torch.save` bytes, everything else as JSON-able data)."""
        return self.learner.state_bytes(), {
            "seeds": self.seeds,
            "iterations": self.iterations,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "episode_means": self.episode_means,
            "last_eval": self.last_eval,
            "train_time_s": self.train_time_s,
            "reached": self.reached,
            "obs_stats": None if self.obs_stats is None else [s.to_dict() for s in self.obs_stats],
            "learner_rng": self.learner.rng_state(),
            "samplers": self.workers.get_states(),
            "config": self.cfg.model_dump(mode="json"),
            "history": self.history,
        }

    def load_state(self, learner_state: bytes, state: dict[str, Any], source: str = "checkpoint") -> str | None:
        """Continues from a `state()`; returns a note when the run cannot continue exactly (the
        workers' episodes restart), else None. A ConfigError when the network does not fit.

        A one-agent checkpoint saved before the agent axis (scalars where lists are now) is read too."""
        saved_seeds = state.get("seeds", [self.cfg.seed])
        if len(saved_seeds) != len(self.seeds):
            raise ConfigError(f"{source}: checkpoint holds {len(saved_seeds)} agent(s) (seeds {saved_seeds}), this "
                              f"experiment trains {len(self.seeds)} (sweep.seeds_per_trial)")
        try:
            self.learner.load_state_bytes(learner_state)
        except RuntimeError as e:
            raise ConfigError(f"{source}: checkpoint does not fit this experiment's network ({e})") from None
        self.learner.set_rng_state(state["learner_rng"])

        def per_agent(d: dict[str, Any]) -> dict[str, list[float]]:
            return {key: v if isinstance(v, list) else [v] for key, v in d.items()}

        self.iterations = state["iterations"]
        self.env_steps = state["env_steps"]
        self.episodes = state["episodes"]
        self.episode_means = per_agent(state["episode_means"])
        self.last_eval = per_agent(state["last_eval"])
        self.train_time_s = state.get("train_time_s", 0.0)  # absent from older checkpoints
        reached = state.get("reached")
        self.reached = reached if isinstance(reached, list) else [reached]
        # the update's values: those of this config (a PBT clone's perturbed ones) from here on
        self.history = state.get("history") or []
        self._follow_schedules()
        stats = state["obs_stats"]
        if stats is not None and self.obs_stats is not None:
            self.obs_stats = [RunningMeanStd.from_dict(d) for d in (stats if isinstance(stats, list) else [stats])]
        saved = state["samplers"]
        if len(saved) != self.workers.size:
            note = (f"restored onto {self.workers.size} sampler(s) from a checkpoint of {len(saved)}: "
                    "the policy, optimiser and counters continue, the workers' episodes start afresh")
            log.warning("%s: %s", source, note)
            return note
        # a restart seed distinct per restore point: envs that cannot be restored start new episodes
        restored = self.workers.set_states(saved, self.iterations)
        if not all(restored):
            note = "this env's state cannot be saved: the workers' episodes restarted at the restore"
            log.warning("%s: %s", source, note)
            return note
        return None

    def close(self) -> None:
        """Releases the workers and the learner (their actors and envs)."""
        self.workers.close()
        self.learner.close()
