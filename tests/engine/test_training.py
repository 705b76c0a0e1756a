"""One PPO run without Ray: the lr schedule, an iteration's metrics, exact continuation from state()."""

import math
import subprocess
import sys

import pytest

from rlsweep import metrics as M
from rlsweep.config import PPOConfig, validate
from rlsweep.engine.training import NonFiniteError, Training, learning_rate
from rlsweep.engine.workers import LocalWorkers
from tests.conftest import ROOT, small_config


def test_learning_rate_schedule():
    flat = PPOConfig(lr=0.01)
    assert learning_rate(flat, 0, 1000) == learning_rate(flat, 900, 1000) == 0.01
    assert learning_rate(flat, 5000, None) == 0.01
    annealed = PPOConfig(lr=0.01, anneal_lr=True)
    assert learning_rate(annealed, 0, 1000) == pytest.approx(0.01)
    assert learning_rate(annealed, 250, 1000) == pytest.approx(0.0075)
    assert learning_rate(annealed, 1000, 1000) == 0.0
    assert learning_rate(annealed, 1500, 1000) == 0.0  # held at 0 past the horizon, never negative
    with pytest.raises(ValueError):
        learning_rate(annealed, 0, None)


def training(**sections):
    cfg = validate(small_config(workers=0, **sections))
    return Training(cfg, LocalWorkers(cfg))


def comparable(result):
    timings = {M.TIME_SAMPLE_S, M.TIME_LEARN_S, M.TIME_EVAL_S, M.TIME_OTHER_S, M.ENV_STEPS_PER_S}
    return {k: v for k, v in result.items() if k not in timings}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], k


def test_iterate_reports_every_metric_and_counts_steps():
    t = training(ppo={"anneal_lr": True})
    first, second = t.iterate(), t.iterate()
    t.close()
    documented = M.REPORTED - {M.TIME_TOTAL_S, M.TRAINING_ITERATION, M.ENV_STEPS_TO_TARGET, M.TIME_TO_TARGET_S,
                               M.SEEDS_AT_TARGET}
    assert set(first) == documented
    assert second[M.ENV_STEPS] == 2 * 64 and t.iterations == 2
    assert second[M.LR] < first[M.LR] == pytest.approx(1e-3)  # annealed over stop.env_steps
    assert math.isnan(first[M.EVAL_RETURN_MEAN]) and not math.isnan(second[M.EVAL_RETURN_MEAN])  # interval 2


def test_state_round_trip_continues_exactly():
    reference = training(policy={"normalize_observations": True})
    expected = [comparable(reference.iterate()) for _ in range(3)]
    reference.close()

    a = training(policy={"normalize_observations": True})
    a.iterate(), a.iterate()
    learner_state, state = a.state()
    a.close()
    b = training(policy={"normalize_observations": True})
    assert b.load_state(learner_state, state) is None
    got = comparable(b.iterate())
    b.close()
    assert_same(expected[2], got)


def test_steps_to_target_is_the_budget_until_an_evaluation_reaches_the_target():
    # CartPole's return is at least 8 per episode: a target of 5 is met at the first evaluation (iteration 2)
    t = training(stop={"target_return": 5.0, "env_steps": 1000})
    first, second, third = t.iterate(), t.iterate(), t.iterate()
    assert first[M.ENV_STEPS_TO_TARGET] == 1000  # not evaluated yet: the budget
    assert second[M.ENV_STEPS_TO_TARGET] == third[M.ENV_STEPS_TO_TARGET] == 128  # held once reached
    assert (first[M.SEEDS_AT_TARGET], second[M.SEEDS_AT_TARGET], third[M.SEEDS_AT_TARGET]) == (0, 1, 1)
    assert 0 < second[M.TIME_TO_TARGET_S] == third[M.TIME_TO_TARGET_S] < 60
    learner_state, state = t.state()
    t.close()
    restored = training(stop={"target_return": 5.0, "env_steps": 1000})
    restored.load_state(learner_state, state)
    assert restored.iterate()[M.ENV_STEPS_TO_TARGET] == 128  # a restore keeps when the target was met
    restored.close()
    never = training(stop={"target_return": 1e9, "env_steps": 1000})
    rows = [never.iterate() for _ in range(3)]
    never.close()
    assert [r[M.ENV_STEPS_TO_TARGET] for r in rows] == [1000, 1000, 1000]
    # without a time budget, the seconds spent so far
    assert 0 < rows[0][M.TIME_TO_TARGET_S] < rows[1][M.TIME_TO_TARGET_S] < rows[2][M.TIME_TO_TARGET_S]
    plain = training()  # no stop.target_return: not reported
    assert not {M.ENV_STEPS_TO_TARGET, M.SEEDS_AT_TARGET} & set(plain.iterate())
    plain.close()


def test_restore_onto_another_worker_count_says_so(caplog):
    a = training()
    a.iterate()
    learner_state, state = a.state()
    a.close()
    state["samplers"] = state["samplers"] * 2  # as if saved by two rollout workers
    b = training()
    with caplog.at_level("WARNING"):
        note = b.load_state(learner_state, state, source="ckpt-7")
    b.close()
    assert note is not None and "onto 1 sampler(s) from a checkpoint of 2" in note
    assert "ckpt-7" in caplog.text and note in caplog.text
    assert b.env_steps == 64  # the rest of the state did load


def test_training_imports_no_ray():
    code = ("import sys; from rlsweep.config import validate; from rlsweep.engine.training import Training; "
            "from rlsweep.engine.workers import make_workers; from tests.conftest import small_config; "
            "cfg = validate(small_config(workers=0)); t = Training(cfg, make_workers(cfg)); t.iterate(); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("sections, fragment", [
    ({"env": {"id": "tests.faulty_envs:NanRewardCartPole", "kwargs": {"nan_after": 30}}},
     "iteration 2: the env returned non-finite rewards"),
    ({"ppo": {"lr": 1e30}}, "iteration 1: policy_loss became nan in the PPO update"),
])
def test_non_finite_values_stop_training_and_say_where(sections, fragment):
    t = training(**sections)
    with pytest.raises(NonFiniteError) as e:
        for _ in range(10):
            t.iterate()
    t.close()
    assert fragment in str(e.value)


def test_a_non_finite_evaluation_is_an_error_that_carries_the_iteration_metrics():
    t = training(env={"id": "tests.faulty_envs:NanRewardCartPole", "kwargs": {"nan_after": 10_000}},
                 evaluation={"interval": 1, "episodes": 2})
    for env in t.workers.evaluator.envs[0].envs:  # only the evaluation's envs turn NaN
        env.unwrapped.nan_after = 0
    with pytest.raises(NonFiniteError, match="iteration 1: the evaluation env returned non-finite rewards") as e:
        t.iterate()
    t.close()
    assert e.value.metrics[M.ENV_STEPS] == t.cfg.ppo.train_batch_size and math.isfinite(e.value.metrics[M.POLICY_LOSS])
