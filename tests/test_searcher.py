"""Fences around the private Ray and Optuna internals rlsweep relies on: when an upgrade moves them,
these fail with a message that says what moved, before a sweep or a resume breaks."""

import inspect

import optuna
import pytest

from rlsweep.config import validate
from rlsweep.tuning.searcher import make_sampler, searcher_class
from tests.conftest import small_config


def test_ray_optuna_search_still_has_what_the_subclass_overrides():
    from ray.tune.search.optuna import OptunaSearch

    for name in ("_suggest_from_define_by_run_func", "on_trial_result", "suggest"):
        assert callable(getattr(OptunaSearch, name, None)), f"ray.tune OptunaSearch.{name} is gone: see searcher.py"
    params = list(inspect.signature(OptunaSearch._suggest_from_define_by_run_func).parameters)
    assert params == ["self", "func", "ot_trial"], f"OptunaSearch._suggest_from_define_by_run_func is now {params}"
    source = inspect.getsource(OptunaSearch)
    for attr in ("self._ot_trials", "self._ot_study"):
        assert attr in source, f"OptunaSearch no longer keeps {attr}: ResumableOptunaSearch reads it"


def test_optuna_trial_internals():
    study = optuna.create_study()
    frozen = study.ask()
    assert hasattr(study.trials[0], "_trial_id"), "optuna FrozenTrial._trial_id is gone: see searcher._orphan"
    again = optuna.trial.Trial(study, study.trials[0]._trial_id)
    assert again.number == frozen.number, "optuna.trial.Trial(study, trial_id) no longer reopens a trial"


def test_tune_usage_hook_used_to_warm_imports():
    import ray.air._internal.usage as usage

    assert callable(getattr(usage, "_count_callbacks", None)), \
        "ray.air._internal.usage._count_callbacks is gone: see tuning._warm_imports"


def test_tune_env_propagation_that_secrets_are_kept_out_of():
    from ray.tune.execution import class_cache

    assert isinstance(getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None), set), \
        "ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE moved: see tuning._secrets_kept_from_ray"


def test_tune_trial_retry_rule_that_a_nan_row_turns_off():
    from ray.tune.experiment import Trial

    source = inspect.getsource(Trial.should_recover)
    assert "self.max_failures" in source, "Trial.should_recover no longer reads max_failures: see callback.on_trial_result"


def test_searcher_drives_a_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def space(trial):
        return {"ppo": {"lr": trial.suggest_float("ppo.lr", 1e-4, 1e-2, log=True)}}

    search = searcher_class()(space=space, metric="m", mode="max", sampler=make_sampler(validate(small_config())),
                              study_name="s", storage=optuna.storages.RDBStorage(storage))
    config = search.suggest("t1")
    assert set(config) == {"ppo"} and 1e-4 <= config["ppo"]["lr"] <= 1e-2
    search.on_trial_complete("t1", {"m": 1.0})
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert study.trials[0].user_attrs["tune_trial_id"] == "t1"


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_each_sampler_is_seeded(sampler):
    def first_suggestions(seed):
        study = optuna.create_study(sampler=make_sampler(validate(small_config(sweep={"sampler": sampler,
                                                                                      "seed": seed}))))
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)]

    assert first_suggestions(7) == first_suggestions(7)
    assert first_suggestions(7) != first_suggestions(8)


def test_an_invalid_suggestion_is_failed_in_the_study_and_the_sampler_asked_again(tmp_path):
    """A space whose integer range holds invalid values (built directly: load_search_space refuses it):
    the searcher hands Tune only valid configs and tells the study which ones it skipped."""
    from rlsweep.search_space import Int, SearchSpace

    base = small_config(ppo={"train_batch_size": 1024, "minibatch_size": 64})
    space = SearchSpace({"ppo.minibatch_size": Int(type="int", low=60, high=70)}, "space.yaml", base)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = searcher_class()(space=space.suggest, metric="m", mode="max", check=space.check,
                              sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                              storage=optuna.storages.RDBStorage(storage))
    config = search.suggest("t1")
    assert config == {"ppo": {"minibatch_size": 64}}  # the only value in 60..70 that divides 1024
    study = optuna.load_study(study_name="s", storage=storage)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all("must divide train_batch_size" in t.user_attrs["invalid_config"] for t in failed)
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs["tune_trial_id"] for t in running] == ["t1"]
