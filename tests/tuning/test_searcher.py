"""The Optuna sampler and the resumable Tune searcher (their private internals: test_compat.py)."""


import optuna
import pytest

from rlsweep.config import validate
from rlsweep.tracking.parents import SweepParent
from rlsweep.tuning.searcher import SUGGESTED, make_sampler, searcher_class
from tests.conftest import small_config


def test_searcher_drives_a_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def space(trial):
        return {"ppo": {"lr": trial.suggest_float("ppo.lr", 1e-4, 1e-2, log=True)}}

    search = searcher_class()(space=space, metric="m", mode="max", sampler=make_sampler(validate(small_config())),
                              study_name="s", storage=optuna.storages.RDBStorage(storage))
    config = search.suggest("t1")
    assert set(config) == {"ppo"} and 1e-4 <= config["ppo"]["lr"] <= 1e-2
    search.suggest("t2")
    # each trial's run, once created, names its Optuna trial: one suggested in this process by its id,
    # one suggested before a resume by a search of the study
    parent = SweepParent(name="s", run_dir=str(tmp_path), metric="m", mode="max", searched=["ppo.lr"],
                         study=(storage, "s"))
    del SUGGESTED["t2"]
    parent.run_opened("t1", "001", "run1")
    parent.run_opened("t2", "002", "run2")
    search.on_trial_complete("t1", {"m": 1.0})
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs for t in study.trials] == [
        {"tune_trial_id": "t1", "rlsweep_trial": "001", "mlflow_run_id": "run1"},
        {"tune_trial_id": "t2", "rlsweep_trial": "002", "mlflow_run_id": "run2"}]


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
