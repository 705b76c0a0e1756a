"""PPO as a Ray Tune class Trainable: a thin adapter from Tune's life cycle to `training.Training`."""

from __future__ import annotations

import logging
import math
from typing import Any

from ray import tune

from rlsweep import metrics as M
from rlsweep import verbosity
from rlsweep.config import ExperimentConfig
from rlsweep.engine.learners import LearnerGroup
from rlsweep.engine.training import NonFiniteError, Training
from rlsweep.engine.workers import RemoteWorkers, make_workers
from rlsweep.ppo import checkpoint


def resource_request(cfg: ExperimentConfig) -> tune.PlacementGroupFactory:
    """The trial's bundles (`ExperimentConfig.bundles`) as a placement group: the trainable's first."""
    return tune.PlacementGroupFactory([bundle for _, bundle in cfg.bundles()])


class PPOTrainable(tune.Trainable):
    """Config: an `ExperimentConfig` as a dict. `restore_from`: a checkpoint directory to start from."""

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> tune.PlacementGroupFactory:
        """The trial's placement group, from its own config (`resource_request`)."""
        return resource_request(ExperimentConfig.model_validate(config))

    def setup(self, config: dict[str, Any], restore_from: str | None = None) -> None:
        """Builds the trial's workers, learner and `Training` from its config dict.

        `restore_from`: a checkpoint to continue from. Returns once the workers are up, so that `step`
        times iterations, not actor start-up.
        """
        for name in ("ray.tune", "ray.train"):  # no line per saved checkpoint
            logging.getLogger(name).setLevel(verbosity.level())
        self.cfg = ExperimentConfig.model_validate(config)
        workers = make_workers(self.cfg)  # actors first: their processes start while the learner is built
        learner = LearnerGroup(self.cfg) if self.cfg.learners.num_learners else None
        self.training = Training(self.cfg, workers, learner)
        self._note: str | None = None
        self._diverged: NonFiniteError | None = None
        self._lineage: list[str] = []  # PBT: the trials this one continued from, "<trial id>@<env steps>"
        self._cloned_from: str | None = None
        if restore_from is not None:  # (`train --restore`: another run's checkpoint, never a PBT copy)
            self._load(restore_from, from_tune=False)
        workers.wait_ready()  # so that step() times steps, not actor start-up
        self._placement: str | None = self._where(workers, learner)

    @staticmethod
    def _where(workers: Any, learner: LearnerGroup | None) -> str:
        import ray

        def short(node_ids: list[str]) -> str:
            return ",".join(n[:8] for n in node_ids)

        parts = [f"trainable={short([ray.get_runtime_context().get_node_id()])}"]
        if isinstance(workers, RemoteWorkers):
            parts += [f"rollout={short(workers.node_ids())}", f"evaluation={short(workers.node_ids(evaluator=True))}"]
        if learner is not None:
            parts.append(f"learners={short(learner.node_ids())}")
        return " ".join(parts)

    @property
    def last_rollout_pids(self) -> list[int]:
        """The process ids of the samplers of the latest iteration, in sampler order."""
        return self.training.last_rollout_pids

    def step(self) -> dict[str, Any]:
        """One training iteration's metrics (`Training.iterate`).

        The first result of a trial carries its placement, the first after a restore the restore's note.
        An iteration that meets a NaN or an infinity returns what it measured (`eval_return_mean` NaN,
        `non_finite` saying why); the next call raises its `NonFiniteError`, failing the trial.
        """
        if self._diverged is not None:
            raise self._diverged
        try:
            result: dict[str, Any] = self.training.iterate()
        except NonFiniteError as e:
            # report what the iteration measured first (Tune passes no result with an error), then fail:
            # the next step, or a checkpoint of the broken state, raises this error
            self._diverged = e
            return {**self.training.target_metrics(), **e.metrics, M.EVAL_RETURN_MEAN: math.nan,
                    M.NON_FINITE: str(e)}
        if self._note is not None:
            result[M.RESTORE_NOTE], self._note = self._note, None
        if self._placement is not None:
            result[M.PLACEMENT], self._placement = self._placement, None
        if self._cloned_from is not None:
            result[M.CLONED_FROM], self._cloned_from = self._cloned_from, None
            result[M.LINEAGE] = " ".join(self._lineage)
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> str:
        """Writes the training state into `checkpoint_dir` (`ppo.checkpoint`) and returns that path.

        After a non-finite iteration it raises that iteration's `NonFiniteError` instead: no checkpoint
        of non-finite weights.
        """
        if self._diverged is not None:  # never a checkpoint of non-finite weights
            raise self._diverged
        learner_state, state = self.training.state()
        checkpoint.write(checkpoint_dir, learner_state, {**state, "trial": self.trial_id, "lineage": self._lineage})
        return checkpoint_dir

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Continues from a checkpoint; a note on an inexact restore goes out with the next result.

        Under PBT the checkpoint may be another trial's: this trial then continues as a copy of it (its
        weights, optimiser, normaliser, RNG and env states, every agent's) with this trial's config,
        whose perturbed values the learner runs with from here on; the next result names the trial
        copied (`cloned_from`) and this trial's line of copies (`lineage`)."""
        self._load(checkpoint_dir, from_tune=True)

    def _load(self, checkpoint_dir: str, from_tune: bool) -> None:
        learner_state, state = checkpoint.read(checkpoint_dir)
        self._note = self.training.load_state(learner_state, state, source=checkpoint_dir)
        source = state.get("trial")
        self._lineage = list(state.get("lineage") or [])
        if from_tune and self.cfg.sweep.scheduler == "pbt" and source not in (None, self.trial_id):
            self._lineage.append(f"{source}@{state['env_steps']}")
            self._cloned_from = source

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """A real reset for actor reuse: new learner, new workers, counters at zero."""
        self.cleanup()
        self.setup(new_config)
        return True

    def cleanup(self) -> None:
        """Releases the trial's workers and learner (actors killed, envs closed)."""
        self.training.close()


def trainable_for(restore_from: str | None = None) -> Any:
    """PPOTrainable with its resources computed from each trial's own config."""
    trainable = PPOTrainable
    if restore_from is not None:
        trainable = tune.with_parameters(PPOTrainable, restore_from=restore_from)
    return tune.with_resources(trainable, lambda config: resource_request(ExperimentConfig.model_validate(config)))



def trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default embeds the whole config in the name)."""
    return f"trial_{trial.trial_id}"

