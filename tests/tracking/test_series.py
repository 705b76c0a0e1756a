"""Stepwise series thinned for MLflow (`tracking.series`): the same line with fewer points."""

import math

from rlsweep import metrics as M
from rlsweep.tracking.series import Thinned


def drawn(rows, key):
    """The (step, value) points of `key` MLflow would get from `rows`, in step order."""
    return sorted((step, values[key]) for step, _, values in rows if key in values)


def test_a_stepwise_series_keeps_its_ends_and_both_sides_of_each_change():
    series = Thinned()
    lrs = [3e-4, 3e-4, 3e-4, 1e-4, 1e-4, 1e-4, 5e-5]
    out = []
    for i, lr in enumerate(lrs):
        out += series.rows([(64 * (i + 1), 1000 + i, {M.LR: lr, M.WORKERS_REPLACED: 0})])
    out += series.end()
    assert drawn(out, M.LR) == [(64, 3e-4), (192, 3e-4), (256, 1e-4), (384, 1e-4), (448, 5e-5)]
    assert drawn(out, M.WORKERS_REPLACED) == [(64, 0), (448, 0)]
    # every point left out lies on the flat stretch between two that are kept: the same line
    kept = dict(drawn(out, M.LR))
    for i, lr in enumerate(lrs):
        step = 64 * (i + 1)
        before = max(s for s in kept if s <= step)
        after = min(s for s in kept if s >= step)
        assert kept[before] == kept[after] == lr
    held_ts = [ts for step, ts, values in out if M.LR in values and step == 192]
    assert held_ts == [1002]  # a point put back keeps its own time


def test_measurements_are_written_every_iteration_repeats_included():
    series = Thinned()
    out = series.rows([(s, 0, {M.EPISODE_RETURN_MEAN: 500.0, "hp/ppo.clip": 0.2}) for s in (64, 128, 192)])
    assert drawn(out, M.EPISODE_RETURN_MEAN) == [(64, 500.0), (128, 500.0), (192, 500.0)]
    assert drawn(out, "hp/ppo.clip") == [(64, 0.2)]  # (the values PBT changes are stepwise)
    assert drawn(series.end(), "hp/ppo.clip") == [(192, 0.2)]


def test_nan_is_never_a_repeat_and_a_copy_leaves_the_original_as_it_was():
    series = Thinned()
    series.rows([(64, 0, {M.LR: 1e-3})])
    attempt = series.copy()
    assert attempt.rows([(128, 0, {M.LR: 1e-3})]) == []
    # a failed write is retried from the original: the repeat is still to be held there
    assert series.end() == []
    nan = Thinned()
    out = nan.rows([(64, 0, {M.UPDATE_EPOCHS: math.nan}), (128, 0, {M.UPDATE_EPOCHS: math.nan})])
    assert [s for s, _, v in out] == [64, 128]


def test_after_end_every_value_is_written_again():
    series = Thinned()
    series.rows([(64, 0, {M.LR: 1e-3}), (128, 0, {M.LR: 1e-3})])
    assert drawn(series.end(), M.LR) == [(128, 1e-3)]
    assert drawn(series.rows([(64, 0, {M.LR: 1e-3})]), M.LR) == [(64, 1e-3)]  # (a clone starts over)


def test_a_flush_writes_what_is_held_and_keeps_holding_repeats_after_it():
    series = Thinned()
    series.rows([(64, 0, {M.LR: 1e-3}), (128, 0, {M.LR: 1e-3})])
    assert drawn(series.flush(), M.LR) == [(128, 1e-3)]  # (a checkpoint: every point before it written)
    assert series.rows([(192, 0, {M.LR: 1e-3})]) == []  # still a repeat of what MLflow has
    assert drawn(series.end(), M.LR) == [(192, 1e-3)]
