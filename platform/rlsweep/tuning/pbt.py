"""Population-based training on Tune's `PopulationBasedTraining`, with rlsweep's search space.

The population is `sweep.trials` trials drawn at random from the search space (`initial_population`,
seeded by `sweep.seed`). Every `sweep.pbt.interval` env steps a trial in the bottom quantile continues
from the checkpoint one in the top saved at that step (synchronous PBT, the default: the whole population
at the same env step; Tune restores it through `PPOTrainable.load_checkpoint`: weights, optimiser,
normaliser, RNG and env states, every agent of a K-seed trial) with that trial's values explored by the
search space's own distributions (`SearchSpace.explore`: within their bounds, gamma on 1 - gamma,
integers on their grid, choices to a neighbour), so an explored value is always one the space allows.
The trainable is built from the new config, so its learner runs the new values, not the checkpoint's
(the trap of ray#62173); `hp/<key>` metrics read them back from the learner.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.sample import Categorical

from rlsweep import compat
from rlsweep import metrics as M
from rlsweep.config import ExperimentConfig
from rlsweep.search_space import SearchSpace, merge


def initial_population(space: SearchSpace, base: dict[str, Any], size: int, seed: int) -> list[dict[str, Any]]:
    """`size` full trial configs: `base` with the searched keys drawn at random (valid ones only)."""
    rng = np.random.default_rng([seed, 0x9B7])
    return [merge(copy.deepcopy(base), space.draw(rng)) for _ in range(size)]


def _get(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def scheduler(cfg: ExperimentConfig, space: SearchSpace) -> Any:
    """Tune's PopulationBasedTraining over `space`, timed in env steps, exploring with `space`."""
    return SpacePBT(cfg, space)


class SpacePBT(PopulationBasedTraining):
    """Explores with the search space's distributions and a seeded generator (Tune's explore multiplies
    gamma by 1.2 past 1 and draws from the global `random`).

    A module-level class: Tune pickles the scheduler into the sweep's tuner.pkl, and `rlsweep resume`
    should run this code, not a copy of the class as it was when the sweep started."""

    def __init__(self, cfg: ExperimentConfig, space: SearchSpace) -> None:
        s, pbt = cfg.sweep, cfg.sweep.pbt
        # (Tune wants one mutation per key, for its logs and trial tags; `_get_new_config` is ours)
        mutations: dict[str, Any] = {}
        for name in space.params:
            merge(mutations, {name.split(".")[0]: {name.split(".", 1)[1]: Categorical([None])}})
        super().__init__(time_attr=M.ENV_STEPS, metric=s.metric, mode=s.mode,
                         perturbation_interval=pbt.interval, burn_in_period=pbt.burn_in,
                         hyperparam_mutations=mutations, quantile_fraction=pbt.quantile_fraction,
                         resample_probability=pbt.resample_probability, log_config=True,
                         # (a result without the metric: the one that reports a divergence, say)
                         require_attrs=False, synch=pbt.synch)
        self._space = space
        self._rng = np.random.default_rng([s.seed, 0x9B8])

    def _get_new_config(self, trial: Any, trial_to_clone: Any) -> tuple[dict, dict]:
        source = trial_to_clone.config
        values = {name: _get(source, name) for name in self._space.params}
        explored = self._space.explore(values, self._rng, self._resample_probability)
        new = merge(copy.deepcopy(source), explored)
        new["seed"] = trial.config["seed"]  # the trial keeps its seeds (its agents' labels, env restarts)
        return new, {}

    def _quantiles(self) -> tuple[list, list]:
        """Tune's bottom and top quantiles, less the bottom trials that score as well as a top one (a
        population tied at a task's maximum would otherwise copy itself round and round)."""
        lower, upper = super()._quantiles()
        if upper:
            worst_top = min(self._trial_state[t].last_score for t in upper)
            lower = [t for t in lower if self._trial_state[t].last_score < worst_top]
        return lower, upper

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """Tune's choice; and where synchronous PBT's next sync point lags behind every waiting trial
        while none runs (after `rlsweep resume` Tune's PBT starts again at the first interval while the
        trials are far on, and its first round sets the next point at the trials' step: the population,
        in step, would wait for ever), the sync point moved past them."""
        trial = super().choose_trial_to_run(tune_controller)
        trials = tune_controller.get_trials()
        if trial is None and self._synch and not any(t.status == Trial.RUNNING for t in trials):
            waiting = [self._trial_state[t].last_train_time for t in trials
                       if t.status in (Trial.PENDING, Trial.PAUSED) and t in self._trial_state]
            if waiting and min(waiting) >= self._next_perturbation_sync:
                self._next_perturbation_sync = max(waiting) + self._perturbation_interval
                trial = super().choose_trial_to_run(tune_controller)
        if trial is not None:  # (a STOP Tune kept for it, in its saved state too, would end it early)
            compat.forget_stale_stop(tune_controller, trial)
        return trial

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)
        # a weak trial copied while its pause was being saved: Tune leaves a STOP behind (ray#57906)
        compat.forget_stale_stop(tune_controller, trial)
        # Tune's tag spells out every key of each perturbed section; the searched values suffice
        values = ",".join(f"{name.rsplit('.', 1)[-1]}={_shown(_get(trial.config, name))}" for name in self._space.params)
        trial.set_experiment_tag(f"{self._trial_state[trial].orig_tag}@perturbed[{values}]")


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
