"""A trial's score over its seeds: the interquartile mean and its bootstrap interval, checked against
values worked out by hand; and how `metrics.summarise` reports K agents' metrics."""

import math

import numpy as np
import pytest

from rlsweep import metrics as M
from rlsweep.scores import Score, iqm, score


def by_hand(values):
    """The IQM as its definition says: sort, drop floor(n / 4) values at each end, average the rest."""
    x = sorted(values)
    cut = len(x) // 4
    kept = x[cut : len(x) - cut]
    return sum(kept) / len(kept)


def test_iqm_cuts_a_quarter_from_each_end():
    assert iqm([1, 2, 3, 4]) == 2.5  # n = 4: 1 and 4 cut
    assert iqm([4, 1, 3, 2]) == 2.5  # order does not matter
    assert iqm([10, 1, 7, 3, 100, 5, -50, 2]) == (2 + 3 + 5 + 7) / 4  # n = 8: two cut at each end
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # n = 5: one cut at each end
    assert iqm([5, 1, 9]) == 5.0  # below 4 nothing is cut: the mean
    assert iqm([1, 100]) == 50.5
    assert iqm([7.5]) == 7.5
    assert isinstance(iqm([1, 2, 3, 4]), float)


def test_iqm_equals_the_definition_and_works_along_an_axis():
    rng = np.random.default_rng(0)
    for n in range(1, 14):
        x = rng.normal(size=n).tolist()
        assert iqm(x) == pytest.approx(by_hand(x), rel=1e-12), n
    rows = rng.normal(size=(5, 9))
    np.testing.assert_allclose(iqm(rows, axis=1), [by_hand(r) for r in rows.tolist()], rtol=1e-12)
    np.testing.assert_allclose(iqm(rows, axis=0), [by_hand(c) for c in rows.T.tolist()], rtol=1e-12)


def test_the_score_of_one_seed_is_its_value():
    assert score([3.25]) == Score(3.25, 3.25, 3.25, 3.25, 3.25)


def test_equal_values_give_a_zero_width_interval():
    assert score([2.0] * 5) == Score(2.0, 2.0, 2.0, 2.0, 2.0)


def test_the_interval_of_two_seeds_spans_them():
    """Seeds [0, 1]: the bootstrap's resampled IQMs are 0, 0.5 or 1 (probabilities 1/4, 1/2, 1/4), so
    the 2.5% and 97.5% quantiles of 2000 resamples are 0 and 1."""
    s = score([0.0, 1.0])
    assert (s.iqm, s.low, s.high, s.min, s.max) == (0.5, 0.0, 1.0, 0.0, 1.0)


def test_the_interval_contains_the_iqm_lies_within_the_values_and_is_repeatable():
    rng = np.random.default_rng(1)
    for n in (2, 3, 4, 5, 8, 10):
        values = rng.normal(100, 30, n).tolist()
        s = score(values)
        assert s.iqm == iqm(values)
        assert min(values) == s.min <= s.low <= s.iqm <= s.high <= s.max == max(values), (n, s)
        assert s.low < s.high
        assert score(values) == s  # the same scores, the same interval (a fixed bootstrap stream)
        assert score(list(values)) == score(np.array(values))
        narrow = score(values, level=0.5)  # a lower level, a narrower interval
        assert s.low <= narrow.low <= narrow.high <= s.high


def test_nan_in_is_nan_out():
    for values in ([1.0, math.nan, 3.0], [math.nan], []):
        assert all(math.isnan(v) for v in score(values)), values


def test_summarise_one_agent_reports_its_values_as_they_are():
    per_agent = {M.EVAL_RETURN_MEAN: [5.0], M.EPISODE_RETURN_MEAN: [math.nan], M.POLICY_LOSS: [0.1]}
    out = M.summarise(per_agent, [3])
    assert out.keys() == per_agent.keys()
    assert out[M.EVAL_RETURN_MEAN] == 5.0 and out[M.POLICY_LOSS] == 0.1 and math.isnan(out[M.EPISODE_RETURN_MEAN])


def test_summarise_k_agents_scores_the_scored_metrics_and_averages_the_rest():
    seeds = [3, 4, 5]
    per_agent = {M.EVAL_RETURN_MEAN: [10.0, 60.0, 20.0], M.POLICY_LOSS: [0.1, 0.2, 0.6],
                 M.ENV_STEPS_TO_TARGET: [1000.0, 200.0, 300.0]}
    out = M.summarise(per_agent, seeds)
    for key, values in ((M.EVAL_RETURN_MEAN, [10.0, 60.0, 20.0]), (M.ENV_STEPS_TO_TARGET, [1000.0, 200.0, 300.0])):
        s = score(values)
        assert out[key] == pytest.approx(sum(values) / 3)  # the IQM of 3: their mean
        assert (out[key + "_ci_low"], out[key + "_ci_high"]) == (s.low, s.high)
        assert (out[key + "_min"], out[key + "_max"]) == (min(values), max(values))
        assert [out[M.per_seed(key, seed)] for seed in seeds] == values
    assert M.per_seed(M.EVAL_RETURN_MEAN, 4) == "eval_return_mean/seed_4"
    assert out["eval_return_mean/seed_4"] == 60.0
    assert out[M.POLICY_LOSS] == pytest.approx(0.3)  # not scored: the mean, and nothing beside it
    assert not [k for k in out if k.startswith(M.POLICY_LOSS) and k != M.POLICY_LOSS]
    assert len(out) == 2 * (1 + 4 + 3) + 1


def test_summarise_four_agents_cuts_the_extremes_of_the_scored_metrics_only():
    seeds = [0, 1, 2, 3]
    out = M.summarise({M.EPISODE_RETURN_MEAN: [1.0, 2.0, 3.0, 100.0], M.VALUE_LOSS: [1.0, 2.0, 3.0, 100.0]}, seeds)
    assert out[M.EPISODE_RETURN_MEAN] == 2.5 and out[M.EPISODE_RETURN_MEAN + "_max"] == 100.0
    assert out[M.VALUE_LOSS] == 26.5


def test_summarise_with_an_agent_without_a_value():
    out = M.summarise({M.EPISODE_RETURN_MEAN: [20.0, math.nan, 30.0], M.ENTROPY: [0.5, math.nan, 0.7]}, [7, 8, 9])
    assert math.isnan(out[M.EPISODE_RETURN_MEAN]) and math.isnan(out[M.EPISODE_RETURN_MEAN + "_ci_low"])
    assert out[M.per_seed(M.EPISODE_RETURN_MEAN, 7)] == 20.0  # each seed's own value is still reported
    assert math.isnan(out[M.per_seed(M.EPISODE_RETURN_MEAN, 8)])
    assert math.isnan(out[M.ENTROPY])


def test_the_per_seed_and_interval_names_are_reported_metrics():
    assert M.is_reported(M.EVAL_RETURN_MEAN) and M.is_reported(M.POLICY_LOSS)
    assert M.is_reported("eval_return_mean/seed_4") and M.is_reported("episode_return_mean_ci_low")
    assert M.is_reported("env_steps_to_target_max") and M.is_reported("time_to_target_s/seed_12")
    assert not M.is_reported("policy_loss/seed_3") and not M.is_reported("value_loss_min")
    assert not M.is_reported("no_such_metric")
