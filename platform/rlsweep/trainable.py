"""PPO as a Ray Tune class Trainable: one `step()` is one sample + update iteration."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray import tune

from rlsweep import checkpoint
from rlsweep import metrics as M
from rlsweep.batch import Rollout, to_train_batch
from rlsweep.config import ConfigError, ExperimentConfig
from rlsweep.envs import space_info
from rlsweep.normalization import RunningMeanStd
from rlsweep.rollout import Evaluator, Sampler, remote_evaluator, remote_samplers

if TYPE_CHECKING:
    from rlsweep.ppo import Learner


def resource_request(cfg: ExperimentConfig) -> tune.PlacementGroupFactory:
    """One bundle for the learner, one per rollout worker, one for evaluation."""
    r = cfg.resources
    learner: dict[str, float] = {"CPU": r.learner_cpus}
    if r.learner_gpus > 0:
        learner["GPU"] = r.learner_gpus
    if cfg.rollouts.num_rollout_workers == 0:
        return tune.PlacementGroupFactory([learner])
    workers = [{"CPU": r.worker_cpus}] * cfg.rollouts.num_rollout_workers
    return tune.PlacementGroupFactory([learner, *workers, {"CPU": r.evaluation_cpus}])


class PPOTrainable(tune.Trainable):
    """Config: an `ExperimentConfig` as a dict. `restore_from`: a checkpoint directory to start from."""

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return resource_request(ExperimentConfig.model_validate(config))

    def setup(self, config: dict[str, Any], restore_from: str | None = None) -> None:
        self.cfg = cfg = ExperimentConfig.model_validate(config)
        for name in ("ray.tune", "ray.train"):  # no line per saved checkpoint
            logging.getLogger(name).setLevel(logging.WARNING)
        space = space_info(cfg.env)
        self.remote = cfg.rollouts.num_rollout_workers > 0
        if self.remote:  # actors first: their processes start while this one imports torch
            self.samplers: list[Any] = remote_samplers(cfg)
            self.evaluator: Any = remote_evaluator(cfg)
        else:
            self.samplers = [Sampler(cfg, 0)]
            self.evaluator = Evaluator(cfg)

        import torch  # here, not at import: the driver and the rollout actors never need torch

        from rlsweep.ppo import Learner

        torch.set_num_threads(cfg.resources.torch_threads)
        device = "cuda" if cfg.resources.learner_gpus > 0 else "cpu"
        self.learner: Learner = Learner(space, cfg.policy, cfg.ppo, cfg.seed, device)
        self.obs_stats = RunningMeanStd.zeros(space.obs_dim) if cfg.policy.normalize_observations else None
        self.env_steps = 0
        self.episodes = 0
        self.iterations = 0
        # means over the episodes that ended in the latest iteration that ended any (RLlib's sense)
        self.episode_means = {M.EPISODE_RETURN_MEAN: math.nan, M.EPISODE_LENGTH_MEAN: math.nan}
        self.last_eval = {M.EVAL_RETURN_MEAN: math.nan, M.EVAL_RETURN_STD: math.nan, M.EVAL_LENGTH_MEAN: math.nan}
        self.last_rollout_pids: list[int] = []
        if restore_from is not None:
            self.load_checkpoint(restore_from)
        if self.remote:  # so that step() times steps, not actor start-up
            ray.get([a.__ray_ready__.remote() for a in [*self.samplers, self.evaluator]])

    # -- one iteration -----------------------------------------------------------------------------

    def _sample(self) -> list[Rollout]:
        weights = self.learner.weights()
        if not self.remote:
            return [self.samplers[0].sample(weights, self.obs_stats)]
        ref = ray.put(weights)
        return ray.get([s.sample.remote(ref, self.obs_stats) for s in self.samplers])

    def _evaluate(self) -> dict[str, float]:
        weights = self.learner.weights()
        if not self.remote:
            return self.evaluator.evaluate(weights, self.obs_stats, self.iterations)
        return ray.get(self.evaluator.evaluate.remote(weights, self.obs_stats, self.iterations))

    def _lr(self) -> float:
        ppo = self.cfg.ppo
        if not ppo.anneal_lr:
            return ppo.lr
        return ppo.lr * max(0.0, 1.0 - self.env_steps / self.cfg.stop.env_steps)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        rollouts = self._sample()
        t1 = time.perf_counter()
        if self.obs_stats is not None:
            for r in rollouts:
                self.obs_stats = self.obs_stats.merge(RunningMeanStd.of(r.raw_obs))
        batch = to_train_batch(rollouts, cfg.ppo.gamma, cfg.ppo.gae_lambda)
        stats = self.learner.update(batch, self._lr())
        t2 = time.perf_counter()

        self.iterations += 1
        self.env_steps += cfg.ppo.train_batch_size
        self.last_rollout_pids = [r.pid for r in rollouts]
        returns = [x for r in rollouts for x in r.episode_returns]
        if returns:
            self.episodes += len(returns)
            self.episode_means = {
                M.EPISODE_RETURN_MEAN: float(np.mean(returns)),
                M.EPISODE_LENGTH_MEAN: float(np.mean([x for r in rollouts for x in r.episode_lengths])),
            }
        t_eval = 0.0
        if cfg.evaluation.interval and self.iterations % cfg.evaluation.interval == 0:
            t3 = time.perf_counter()
            self.last_eval = self._evaluate()
            t_eval = time.perf_counter() - t3
        total = time.perf_counter() - t0
        return {
            M.ENV_STEPS: self.env_steps,
            M.EPISODES: self.episodes,
            **self.episode_means,
            **self.last_eval,
            **stats,
            M.TIME_SAMPLE_S: t1 - t0,
            M.TIME_LEARN_S: t2 - t1,
            M.TIME_EVAL_S: t_eval,
            M.TIME_OTHER_S: total - (t2 - t0) - t_eval,
            M.ENV_STEPS_PER_S: cfg.ppo.train_batch_size / total,
        }

    # -- checkpoints -------------------------------------------------------------------------------

    def _sampler_states(self) -> list[dict[str, Any]]:
        if not self.remote:
            return [self.samplers[0].get_state()]
        return ray.get([s.get_state.remote() for s in self.samplers])

    def save_checkpoint(self, checkpoint_dir: str) -> str:
        state = {
            "iterations": self.iterations,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "episode_means": self.episode_means,
            "last_eval": self.last_eval,
            "obs_stats": None if self.obs_stats is None else self.obs_stats.to_dict(),
            "learner_rng": self.learner.rng_state(),
            "samplers": self._sampler_states(),
            "config": self.cfg.model_dump(mode="json"),
        }
        checkpoint.write(checkpoint_dir, self.learner.state_bytes(), state)
        return checkpoint_dir

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        learner_bytes, state = checkpoint.read(checkpoint_dir)
        try:
            self.learner.load_state_bytes(learner_bytes)
        except RuntimeError as e:
            raise ConfigError(f"{checkpoint_dir}: checkpoint does not fit this experiment's network ({e})") from None
        self.learner.set_rng_state(state["learner_rng"])
        self.iterations = state["iterations"]
        self.env_steps = state["env_steps"]
        self.episodes = state["episodes"]
        self.episode_means = state["episode_means"]
        self.last_eval = state["last_eval"]
        if state["obs_stats"] is not None and self.obs_stats is not None:
            self.obs_stats = RunningMeanStd.from_dict(state["obs_stats"])
        saved = state["samplers"]
        # A restart seed distinct per restore point: envs that cannot be restored start new episodes.
        if len(saved) == len(self.samplers):
            if self.remote:
                ray.get([s.set_state.remote(st, self.iterations) for s, st in zip(self.samplers, saved, strict=True)])
            else:
                self.samplers[0].set_state(saved[0], self.iterations)

    # -- actor reuse and teardown ------------------------------------------------------------------

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """A real reset for actor reuse: new learner, new workers, counters at zero."""
        self.cleanup()
        self.setup(new_config)
        return True

    def cleanup(self) -> None:
        if self.remote:
            for actor in [*self.samplers, self.evaluator]:
                ray.kill(actor)
        else:
            self.samplers[0].close()
            self.evaluator.close()
        self.samplers = []
