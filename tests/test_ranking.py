"""The one rule for the best trial."""

import math

from rlsweep.ranking import best, rank


def row(tid, value, steps=None):
    return {"trial_id": tid, "m": value, "env_steps": steps}


def test_max_and_min():
    rows = [row("a", 1.0), row("b", 3.0), row("c", 2.0)]
    assert [r["trial_id"] for r in rank(rows, "m", "max")] == ["b", "c", "a"]
    assert [r["trial_id"] for r in rank(rows, "m", "min")] == ["a", "c", "b"]


def test_non_finite_and_missing_values_are_not_ranked():
    rows = [row("a", math.nan), row("b", math.inf), {"trial_id": "c"}, row("d", "500"), row("e", -1.0)]
    assert [r["trial_id"] for r in rank(rows, "m", "max")] == ["e"]
    assert best([row("a", math.nan)], "m", "max") is None
    assert best([], "m", "min") is None


def test_ties_go_to_fewer_env_steps_then_the_earlier_trial_whatever_the_input_order():
    rows = [row("t3", 500.0, 20_000), row("t1", 500.0, 13_000), row("t2", 500.0, 13_000), row("t0", 400.0, 1)]
    for order in (rows, rows[::-1], rows[1:] + rows[:1]):
        assert [r["trial_id"] for r in rank(order, "m", "max")] == ["t1", "t2", "t3", "t0"]
    assert best([row("x", 1.0), row("y", 1.0, 5)], "m", "min")["trial_id"] == "y"  # unknown steps rank last
