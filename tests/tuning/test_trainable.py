"""PPOTrainable on real Ray actors: determinism, exact checkpoint restore, multi-worker sampling."""

import math
import os

import pytest

from rlsweep import metrics as M
from rlsweep.tuning.trainable import PPOTrainable
from tests.conftest import small_config

TIMINGS = {M.TIME_SAMPLE_S, M.TIME_LEARN_S, M.TIME_EVAL_S, M.TIME_OTHER_S, M.ENV_STEPS_PER_S}
DOCUMENTED = M.REPORTED - {M.TIME_TOTAL_S, M.TRAINING_ITERATION,  # Tune adds those two
                          M.ENV_STEPS_TO_TARGET, M.TIME_TO_TARGET_S, M.SEEDS_AT_TARGET}  # only with stop.target_return


def comparable(result):
    # the timings vary, and where the processes run is said once per trainable (its first result)
    return {k: v for k, v in result.items() if k not in TIMINGS and k != M.PLACEMENT}


def run(config, n):
    t = PPOTrainable(config=config)
    try:
        return [comparable(t.step()) for _ in range(n)]
    finally:
        t.stop()


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == b[k], (k, a[k], b[k])


CASES = {
    "cartpole-inline": dict(workers=0),
    "cartpole-1-worker": dict(workers=1),
    "cartpole-2-workers-normalized": dict(workers=2, policy={"normalize_observations": True}),
    "cartpole-2-learner-actors": dict(workers=1, learners={"num_learners": 2, "cpus_per_learner": 0.25}),
    "pendulum-sync-normalized": dict(env_id="Pendulum-v1", workers=1,
                                     env={"vectorization": "sync", "max_episode_steps": 40},
                                     policy={"normalize_observations": True}),
    # three agents (seeds 3, 4, 5) side by side, sampled on two actors and updated on two learner actors
    "cartpole-3-seeds-2-workers-2-learners": dict(workers=2, sweep={"seeds_per_trial": 3},
                                                  policy={"normalize_observations": True},
                                                  learners={"num_learners": 2, "cpus_per_learner": 0.25}),
}


@pytest.mark.parametrize("case", CASES)
def test_same_seed_gives_identical_iterations(ray_local, case):
    config = small_config(**CASES[case])
    first, second = run(config, 3), run(config, 3)
    for a, b in zip(first, second, strict=True):
        same(a, b)
    assert DOCUMENTED <= set(first[0]) | TIMINGS
    assert first[-1][M.ENV_STEPS] == 3 * config["ppo"]["train_batch_size"]


@pytest.mark.parametrize("case", CASES)
def test_restored_checkpoint_continues_exactly(ray_local, case, tmp_path):
    config = small_config(**CASES[case])
    uninterrupted = run(config, 3)

    t = PPOTrainable(config=config)
    for _ in range(2):
        t.step()
    path = t.save(str(tmp_path / "ckpt"))
    t.stop()

    restored = PPOTrainable(config=config)
    restored.restore(path)
    third = comparable(restored.step())
    restored.stop()
    same(uninterrupted[2], third)
    assert third[M.EPISODES] > 0  # episodes did cross the checkpoint


def test_checkpoint_holds_no_pickles(ray_local, tmp_path):
    import json

    import torch

    t = PPOTrainable(config=small_config(workers=1))
    t.step()
    t.save(str(tmp_path / "ckpt"))
    t.stop()
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert {"learner.pt", "state.json"} <= set(files)
    state = torch.load(tmp_path / "ckpt" / "learner.pt", weights_only=True)
    assert {"model", "optimizer", "torch_rng"} <= set(state)
    meta = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert meta["env_steps"] == 64 and meta["samplers"][0]["envs"] is not None


def test_two_workers_sample_in_two_processes(ray_local):
    t = PPOTrainable(config=small_config(workers=2))
    try:
        t.step()
        pids = t.last_rollout_pids
    finally:
        t.stop()
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids


def test_reset_config_is_a_real_reset(ray_local):
    a, b = small_config(workers=1), small_config(workers=1, seed=11)
    fresh_b = run(b, 2)
    t = PPOTrainable(config=a)
    try:
        t.step()
        assert t.reset_config(b) is True
        after = [comparable(t.step()) for _ in range(2)]
    finally:
        t.stop()
    for x, y in zip(fresh_b, after, strict=True):
        same(x, y)


def test_restore_onto_another_worker_count_is_reported_once(ray_local, tmp_path):
    t = PPOTrainable(config=small_config(workers=2))
    t.step()
    t.save(str(tmp_path / "ckpt"))
    t.stop()
    restored = PPOTrainable(config=small_config(workers=0, ppo={"train_batch_size": 128}))
    try:
        restored.restore(str(tmp_path / "ckpt"))
        first, second = restored.step(), restored.step()
    finally:
        restored.stop()
    assert first[M.ENV_STEPS] == 2 * 128  # the counters did carry over
    assert "onto 1 sampler(s) from a checkpoint of 2" in first[M.RESTORE_NOTE]
    assert M.RESTORE_NOTE not in second


def test_a_killed_rollout_or_evaluation_actor_is_replaced(ray_local):
    """SIGKILL to a rollout actor's process (and to the evaluator's): the next iterations go on, on a
    replacement, with the batch complete and the replacement counted."""
    import signal

    t = PPOTrainable(config=small_config(workers=2, evaluation={"interval": 1, "episodes": 2}))
    try:
        t.step()
        victim = t.last_rollout_pids[1]
        os.kill(victim, signal.SIGKILL)
        second = t.step()
        assert second[M.WORKERS_REPLACED] == 1 and second[M.ENV_STEPS] == 2 * 128
        assert victim not in t.last_rollout_pids and len(set(t.last_rollout_pids)) == 2
        evaluator = t.training.workers.evaluator
        os.kill(ray_local.get(evaluator.__ray_call__.remote(lambda _: os.getpid())), signal.SIGKILL)
        third = t.step()
        assert third[M.WORKERS_REPLACED] == 2 and not math.isnan(third[M.EVAL_RETURN_MEAN])
        assert t.training.workers.evaluator is not evaluator
    finally:
        t.stop()
