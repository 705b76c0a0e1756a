"""PBT and schedules: a clone continues bit-equal to its source and runs its perturbed values; what PBT
may perturb; the explore step within the space; piecewise-constant schedules followed by the learner."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rlsweep import metrics as M
from rlsweep.config import ConfigError, validate
from rlsweep.engine.schedules import extend, replayed, schedules_of, value_at
from rlsweep.search_space import load_search_space
from rlsweep.tuning.trainable import PPOTrainable
from tests.conftest import small_config

PBT = {"scheduler": "pbt", "trials": 4, "seeds_per_trial": 2}


def _trainable(config, trial_id):
    t = PPOTrainable(config=config)
    t._trial_info = SimpleNamespace(trial_id=trial_id)  # what Tune gives a trial's trainable
    return t


def test_a_clone_continues_bit_equal_then_runs_its_perturbed_values(ray_local, tmp_path):
    source_cfg = small_config(workers=1, sweep=PBT, policy={"normalize_observations": True},
                              evaluation={"interval": 1, "episodes": 2})
    source = _trainable(source_cfg, "src")
    for _ in range(2):
        source.step()
    path = source.save(str(tmp_path / "ckpt"))
    copied = (source.training.learner.state_bytes(), source.training.learner.rng_state(),
              [s.to_dict() for s in source.training.obs_stats], source.training.workers.get_states())
    after = source.step()  # what the source does next, from the copied state
    source.stop()

    # a clone with the source's own values: the same next iteration, bit for bit
    same = _trainable(source_cfg, "same")
    same.restore(path)
    assert same.training.learner.state_bytes() == copied[0]  # network, Adam state, torch RNG
    assert same.training.learner.rng_state() == copied[1]
    assert [s.to_dict() for s in same.training.obs_stats] == copied[2]
    assert same.training.workers.get_states() == copied[3]  # env states, both agents'
    nxt = same.step()
    same.stop()
    for key in (M.EVAL_RETURN_MEAN, M.POLICY_LOSS, M.APPROX_KL, M.EPISODE_RETURN_MEAN, M.ENV_STEPS):
        assert nxt[key] == after[key], key
    assert nxt[M.CLONED_FROM] == "src" and nxt[M.LINEAGE] == "src@128"

    # a clone with perturbed values: it holds the copied state, and its learner runs the new values
    perturbed = {**source_cfg, "ppo": {**source_cfg["ppo"], "lr": 1.2e-3, "clip": 0.16, "gamma": 0.95}}
    clone = _trainable(perturbed, "clone")
    clone.restore(path)
    assert clone.training.learner.state_bytes() == copied[0]
    result = clone.step()
    settings = clone.training.learner.settings()  # read back from the running learner
    clone.stop()
    assert (settings.lr, settings.clip, settings.gamma) == (1.2e-3, 0.16, 0.95)
    assert result[M.hyperparameter("ppo.lr")] == 1.2e-3 and result[M.LR] == 1.2e-3  # the update used it
    assert result[M.hyperparameter("ppo.clip")] == 0.16
    assert result[M.POLICY_LOSS] != after[M.POLICY_LOSS]  # and it changed what the update did
    history = json.loads(result[M.HP_HISTORY])
    assert [step for step, _ in history] == [0, 128]
    assert history[0][1]["ppo.lr"] == 1e-3 and history[1][1]["ppo.lr"] == 1.2e-3
    assert schedules_of(history)["ppo.lr"] == [[0, 1e-3], [128, 1.2e-3]]


def test_a_trial_restored_from_its_own_checkpoint_is_no_clone(ray_local, tmp_path):
    cfg = small_config(workers=0, sweep=PBT)
    t = _trainable(cfg, "a")
    t.step()
    path = t.save(str(tmp_path / "ckpt"))
    t.stop()
    again = _trainable(cfg, "a")
    again.restore(path)
    result = again.step()
    again.stop()
    assert M.CLONED_FROM not in result
    assert len(json.loads(result[M.HP_HISTORY])) == 1


def _experiment(scheduler="pbt", **extra):
    return validate({"name": "x", "env": {"id": "CartPole-v1"}, "stop": {"env_steps": 1000},
                     "sweep": {"scheduler": scheduler, "trials": 4}, **extra}).model_dump(mode="json")


@pytest.mark.parametrize("key,spec", [
    ("ppo.train_batch_size", "{type: choice, values: [512, 1024]}"),
    ("policy.hidden_sizes", "{type: choice, values: [[64], [64, 64]]}"),
    ("sweep.seeds_per_trial", "{type: int, low: 1, high: 3}"),
    ("env.max_episode_steps", "{type: int, low: 100, high: 200}"),
])
def test_a_key_that_cannot_change_mid_run_is_refused_in_a_pbt_space(tmp_path, key, spec):
    space = tmp_path / "space.yaml"
    space.write_text(f"ppo.lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-3}}\n{key}: {spec}\n")
    with pytest.raises(ConfigError) as e:
        load_search_space(space, _experiment(), "exp.yaml")
    message = str(e.value)
    assert "\n" not in message and str(space) in message and f"'{key}' cannot change while a policy trains" in message
    load_search_space(space, _experiment("fifo"), "exp.yaml")  # the same space is fine for fifo


def test_a_searched_key_with_a_schedule_is_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("ppo.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}\n")
    with pytest.raises(ConfigError, match="also has a schedule"):
        load_search_space(space, _experiment("fifo", schedules={"ppo.lr": [[0, 1e-3]]}), "exp.yaml")


def test_explore_stays_in_the_space_and_moves(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "ppo.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-3}\n"
        "ppo.gamma: {type: loguniform, low: 0.95, high: 0.999, complement: true}\n"
        "ppo.num_epochs: {type: int, low: 2, high: 10, step: 2}\n"
        "ppo.minibatch_size: {type: choice, values: [64, 128, 256]}\n")
    space = load_search_space(space_file, _experiment(), "exp.yaml")
    rng = np.random.default_rng(0)
    start = {"ppo.lr": 1e-3, "ppo.gamma": 0.99, "ppo.num_epochs": 2, "ppo.minibatch_size": 128}
    seen = {k: set() for k in start}
    for _ in range(200):
        new = space.explore(start, rng, resample_probability=0.0)["ppo"]
        assert 1e-4 <= new["lr"] <= 1e-3 and 0.95 <= new["gamma"] <= 0.999
        assert new["num_epochs"] in (2, 4) and new["minibatch_size"] in (64, 256)  # one step on the grid, a neighbour
        assert isinstance(new["lr"], float) and type(new["num_epochs"]) is int
        for k in start:
            seen[k].add(new[k.split(".")[1]])
    assert seen["ppo.lr"] == {1e-3, 0.8e-3}  # x 1.2 is clamped to high
    assert {round(g, 6) for g in seen["ppo.gamma"]} == {0.988, 0.992}  # gamma moves on 1 - gamma
    drawn = [space.draw(rng)["ppo"] for _ in range(50)]
    assert all(1e-4 <= d["lr"] <= 1e-3 and d["num_epochs"] in (2, 4, 6, 8, 10) for d in drawn)
    assert len({d["lr"] for d in drawn}) == 50


def test_schedules_are_validated_in_one_line():
    base = {"name": "x", "env": {"id": "CartPole-v1"}, "stop": {"env_steps": 1000}}
    for schedules, fragment in [
        ({"ppo.train_batch_size": [[0, 512]]}, "'ppo.train_batch_size' cannot change while training"),
        ({"ppo.lr": [[5, 1e-3]]}, "increasing env steps from 0"),
        ({"ppo.lr": [[0, 1e-3], [0, 2e-3]]}, "increasing env steps from 0"),
        ({"ppo.lr": [[0, 1e-3], [100, -1]]}, "schedules.ppo.lr: the value -1.0 from env step 100"),
        ({"ppo.minibatch_size": [[0, 256], [100, 300]]}, "must divide train_batch_size"),
    ]:
        with pytest.raises(ConfigError) as e:
            validate({**base, "schedules": schedules}, "exp.yaml")
        assert fragment in str(e.value) and "\n" not in str(e.value), (schedules, str(e.value))


def test_the_learner_follows_a_schedule(ray_local):
    cfg = small_config(workers=0, evaluation={"interval": 10},
                       schedules={"ppo.lr": [[0, 1e-3], [128, 5e-4]], "ppo.num_epochs": [[0, 2], [64, 3]]})
    t = PPOTrainable(config=cfg)
    try:
        results = [t.step() for _ in range(3)]  # updates after 0, 64 and 128 env steps
        settings = t.training.learner.settings()
    finally:
        t.stop()
    assert [r[M.LR] for r in results] == [1e-3, 1e-3, 5e-4]
    assert [r[M.UPDATE_EPOCHS] for r in results] == [2, 3, 3]
    assert [r[M.hyperparameter("ppo.num_epochs")] for r in results] == [2, 3, 3]
    assert settings.lr == 5e-4 and settings.num_epochs == 3
    # its history is the schedule again
    assert schedules_of(json.loads(results[-1][M.HP_HISTORY])) == {"ppo.lr": [[0, 1e-3], [128, 5e-4]],
                                                                    "ppo.num_epochs": [[0, 2], [64, 3]]}


def test_history_and_schedule_helpers():
    assert value_at([(0, 1.0), (100, 2.0)], 99) == 1.0 and value_at([(0, 1.0), (100, 2.0)], 100) == 2.0
    h = extend([], 0, {"ppo.lr": 1.0})
    assert extend(h, 50, {"ppo.lr": 1.0}) == h  # unchanged values add nothing
    h = extend(extend(h, 50, {"ppo.lr": 2.0}), 50, {"ppo.lr": 3.0})  # the same step: replaced
    assert h == [[0, {"ppo.lr": 1.0}], [50, {"ppo.lr": 3.0}]]
    config = {"name": "x", "ppo": {"lr": 3.0}}
    assert replayed(config, json.dumps(h))["schedules"] == {"ppo.lr": [[0, 1.0], [50, 3.0]]}
    assert replayed(config, json.dumps([[0, {"ppo.lr": 1.0}]])) is config  # nothing changed: no schedule


def test_the_scheduler_explores_within_the_space_keeps_seeds_and_leaves_ties_alone(tmp_path):
    from ray.tune.schedulers.pbt import _PBTTrialState

    from rlsweep.config import ExperimentConfig
    from rlsweep.tuning.pbt import initial_population, scheduler

    space_file = tmp_path / "space.yaml"
    space_file.write_text("ppo.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
                          "ppo.clip: {type: uniform, low: 0.1, high: 0.3}\n")
    base = _experiment(sweep={"scheduler": "pbt", "trials": 4, "seed": 5})
    space = load_search_space(space_file, base, "exp.yaml")
    population = initial_population(space, base, 4, seed=5)
    assert population == initial_population(space, base, 4, seed=5)  # seeded
    assert len({c["ppo"]["lr"] for c in population}) == 4
    assert all(c["ppo"]["train_batch_size"] == base["ppo"]["train_batch_size"] for c in population)
    pbt = scheduler(ExperimentConfig.model_validate(base), space)
    class StandInTrial(SimpleNamespace):  # what the scheduler reads of Tune's trials
        __hash__ = object.__hash__
        __eq__ = object.__eq__

        def is_finished(self):
            return False

    trials = [StandInTrial(config={**c, "seed": 10 + i}, experiment_tag=str(i)) for i, c in enumerate(population)]
    new, _ = pbt._get_new_config(trials[0], trials[3])
    assert new["seed"] == 10 and new["sweep"] == trials[3].config["sweep"]
    assert new["ppo"]["lr"] != trials[3].config["ppo"]["lr"] and 1e-4 <= new["ppo"]["lr"] <= 1e-2
    assert 0.1 <= new["ppo"]["clip"] <= 0.3
    for t, score in zip(trials, (1.0, 5.0, 5.0, 5.0), strict=True):
        pbt._trial_state[t] = _PBTTrialState(t)
        pbt._trial_state[t].last_score = score
    lower, upper = pbt._quantiles()
    assert lower == [trials[0]] and len(upper) == 1
    pbt._trial_state[trials[0]].last_score = 5.0  # all tied: nobody is copied over
    assert pbt._quantiles()[0] == []


def test_a_weak_trial_copied_while_its_pause_is_saved_trains_on(tmp_path, monkeypatch):
    """Synchronous PBT copies a strong trial into a weak one whose pause is still being saved: Tune's
    controller (the real one, its trials stubs without actors) caches a STOP for the weak trial that
    would end it at its next checkpoint, short of its budget (ray#57906; a flaky e2e PBT resume test
    caught it); rlsweep's scheduler drops it, and one Tune held over a resume."""
    from ray.air.execution._internal.tracked_actor import TrackedActor
    from ray.train import Checkpoint
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.experiment.trial import _TrainingResult
    from ray.tune.schedulers import TrialScheduler

    from rlsweep.config import ExperimentConfig
    from rlsweep.tuning.pbt import initial_population, scheduler

    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "4")  # (else the controller asks a running Ray)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("ppo.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    base = _experiment(sweep={"scheduler": "pbt", "trials": 4, "seed": 5, "pbt": {"interval": 2048}})
    space = load_search_space(space_file, base, "exp.yaml")
    pbt = scheduler(ExperimentConfig.model_validate(base), space)
    pbt._log_config = False  # (its policy files go to a Ray session's folder)
    storage = StorageContext(storage_path=str(tmp_path / "results"), experiment_dir_name="pbt")
    controller = TuneController(storage=storage, scheduler=pbt)
    controller._remove_actor = lambda tracked_actor: None  # (stub trials have no actor to stop)
    trials = [Trial("__fake", stub=True, config=c, storage=storage) for c in initial_population(space, base, 4, 5)]
    scores = [3.0, 2.0, 0.0, 1.0]
    for i, (trial, score) in enumerate(zip(trials, scores, strict=True)):
        controller.add_trial(trial)
        actor = TrackedActor(actor_id=i)
        controller._trial_to_actor[trial], controller._actor_to_trial[actor] = actor, trial
        controller._set_trial_status(trial, Trial.RUNNING)
        (tmp_path / str(i)).mkdir()
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            Checkpoint(str(tmp_path / str(i))), {M.ENV_STEPS: 2048, "eval_return_mean": score})
    wrapped, weak = controller._wrapped(), trials[2]
    for trial, score in zip(trials[:3], scores[:3], strict=True):  # three reach the sync point
        result = {M.ENV_STEPS: 2048, "eval_return_mean": score}
        assert pbt.on_trial_result(wrapped, trial, result) == TrialScheduler.PAUSE
        if trial is weak:  # Tune's pause_trial(should_checkpoint=True): its save in flight, PAUSE cached
            trial.temporary_state.saving_to = object()
            controller._cached_trial_decisions[trial.trial_id] = TrialScheduler.PAUSE
        else:
            controller._set_trial_status(trial, Trial.PAUSED)
    pbt.on_trial_result(wrapped, trials[3], {M.ENV_STEPS: 2048, "eval_return_mean": scores[3]})  # the last
    assert weak.status == Trial.PAUSED and weak.config["ppo"]["lr"] != initial_population(space, base, 4, 5)[2]["ppo"]["lr"]
    assert weak.trial_id not in controller._cached_trial_decisions  # (Tune alone leaves "STOP" here)
    for trial in trials:  # as a resumed sweep's state may hold them (Tune pickles its cached decisions)
        controller._cached_trial_decisions[trial.trial_id] = TrialScheduler.STOP
    pbt._next_perturbation_sync = 4096
    chosen = pbt.choose_trial_to_run(wrapped)
    assert chosen is not None and chosen.trial_id not in controller._cached_trial_decisions
    assert len(controller._cached_trial_decisions) == 3  # (only the one that runs now is touched)
