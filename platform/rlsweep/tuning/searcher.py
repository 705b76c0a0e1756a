"""Optuna inside Tune: the sampler a sweep asks for, and the Tune searcher that drives the study.

`ResumableOptunaSearch` builds on `compat.optuna_search_base()`, which puts the private parts of Tune's
`OptunaSearch` it needs behind public names (`tests/test_compat.py` fences them).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

from rlsweep import compat
from rlsweep import metrics as M
from rlsweep.config import ConfigError, ExperimentConfig

log = logging.getLogger(__name__)
MAX_INVALID_IN_A_ROW = 50  # suggestions the sampler may get wrong in a row before the sweep gives up
# Tune trial id -> its Optuna trial's id in the study's storage, for the trials suggested in this process
# (`tracking.parents` names each after its MLflow run without searching the study for it)
SUGGESTED: dict[str, int] = {}


def make_sampler(cfg: ExperimentConfig) -> Any:
    """The Optuna sampler of `sweep.sampler`, seeded, with TPE's options set explicitly (Optuna 5
    changed their defaults)."""
    import optuna

    s = cfg.sweep
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials,
                                          multivariate=s.tpe_multivariate, constant_liar=s.tpe_constant_liar)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


def searcher_class() -> type:
    """`ResumableOptunaSearch` (defined on first use: importing Tune's Optuna searcher takes seconds)."""
    import optuna

    from rlsweep.tuning.bucket import relocate

    class ResumableOptunaSearch(compat.optuna_search_base()):
        """OptunaSearch that, after a crash, hands the Optuna trials Tune never recorded to the new
        Tune trials that replace them, so the study holds each trial once; whose trial configs hold
        only what the define-by-run function returns (the values used, never 1 - gamma); and that
        checks each suggestion (`check`: suggestion -> None or why it is invalid) before a trial
        starts: an invalid one is told to the study as failed, and the sampler asked again.

        Each trial's metric goes into the study as intermediate values, stepped by env steps, at most
        every `report_every_s` seconds and at its end, so that optuna-dashboard draws its curve.
        (OptunaSearch itself writes every iteration, a database write each, stepped by iteration.)"""

        relocate_storage = staticmethod(relocate)  # (a sweep's study in its mirror: `tuning.bucket`)

        def __init__(self, *args: Any, check: Callable[[dict], str | None] | None = None,
                     report_every_s: float = 2.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._check = check
            self._report_every_s = report_every_s
            self._reported: dict[str, float] = {}  # Tune trial id -> when its last value was written

        def __getstate__(self) -> dict[str, Any]:
            return {**super().__getstate__(), "_reported": {}}  # times of this process only

        def config_from(self, func: Any, ot_trial: Any) -> dict:
            return func(ot_trial)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            now = time.monotonic()
            if now - self._reported.get(trial_id, -math.inf) >= self._report_every_s and self._report(trial_id, result):
                self._reported[trial_id] = now

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result:  # the last value, before the study is told the trial ended
                self._report(trial_id, result)
            self._reported.pop(trial_id, None)
            super().on_trial_complete(trial_id, result, error)

        def _report(self, trial_id: str, result: dict) -> bool:
            """The result's metric as the trial's intermediate value at its env steps; False when there
            is none to write (no evaluation yet, or the trial is not this study's)."""
            trial, value, step = self.trials.get(trial_id), result.get(self.metric), result.get(M.ENV_STEPS)
            if trial is None or step is None or not isinstance(value, int | float) or not math.isfinite(value):
                return False
            try:
                with warnings.catch_warnings():  # a step replayed after a resume: the study keeps the first
                    warnings.filterwarnings("ignore", message="The reported value is ignored")
                    trial.report(float(value), int(step))
            except Exception as e:  # noqa: BLE001 - a curve for the dashboard never stops the sweep (a
                # finished trial's repeated completion after a resume, a busy database)
                log.debug("no intermediate value for trial %s: %s", trial_id, e)
                return False
            return True

        def suggest(self, trial_id: str) -> dict | None:
            if trial_id not in self.trials:
                orphan = self._orphan()
                if orphan is not None:
                    self.trials[trial_id] = orphan
            for _ in range(MAX_INVALID_IN_A_ROW):
                config = super().suggest(trial_id)
                problem = self._check(config) if self._check is not None and config is not None else None
                if problem is None:
                    self.trials[trial_id].set_user_attr("tune_trial_id", trial_id)
                    SUGGESTED[trial_id] = compat.optuna_trial_id(self.trials[trial_id])
                    return config
                invalid = self.trials.pop(trial_id)
                invalid.set_user_attr("invalid_config", problem[:1000])
                self.study.tell(invalid, state=optuna.trial.TrialState.FAIL)
                log.warning("skipped an invalid suggestion (study trial %d): %s", invalid.number, problem)
            raise ConfigError(f"the sampler suggested {MAX_INVALID_IN_A_ROW} invalid experiments in a row; narrow "
                              f"the search space to valid combinations (the last: {problem})")

        def _orphan(self) -> Any:
            """A RUNNING study trial that no Tune trial holds (it was started before a crash)."""
            known = {compat.optuna_trial_id(t) for t in self.trials.values()}
            for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if compat.optuna_trial_id(frozen) not in known:
                    return optuna.trial.Trial(self.study, compat.optuna_trial_id(frozen))
            return None

    return ResumableOptunaSearch


def fixed_configs_searcher(configs: list[dict], metric: str, mode: str) -> Any:
    """A Tune searcher that suggests `configs`, one trial each, in order, and then no more: the
    confirmation round's (`commands.sweep`). Its state (which trial got which config) is saved and
    restored with Tune's, so a resumed round neither repeats nor skips one."""
    from ray.tune.search import Searcher

    class FixedConfigs(Searcher):
        def __init__(self) -> None:
            super().__init__(metric=metric, mode=mode)
            self.configs = configs
            self.given: dict[str, int] = {}  # trial id -> index into configs

        def suggest(self, trial_id: str) -> dict | None:
            if trial_id not in self.given:
                if len(self.given) >= len(self.configs):
                    return Searcher.FINISHED
                self.given[trial_id] = len(self.given)
            return self.configs[self.given[trial_id]]

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            """Nothing to learn: the configurations are fixed."""

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "w") as f:
                json.dump({"configs": self.configs, "given": self.given}, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path) as f:
                state = json.load(f)
            self.configs, self.given = state["configs"], state["given"]

    return FixedConfigs()
