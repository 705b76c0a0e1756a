import numpy as np

from rlsweep.ppo.normalization import CLIP, RunningMeanStd


def test_merged_moments_equal_the_moments_of_the_union():
    rng = np.random.default_rng(1)
    parts = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 17, 1, 40)]
    stats = RunningMeanStd.zeros(4)
    for p in parts:
        stats = stats.merge(RunningMeanStd.of(p))
    union = np.concatenate(parts)
    np.testing.assert_allclose(stats.mean, union.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, union.var(0), rtol=1e-4)
    assert stats.count == len(union) + 1e-4


def test_merge_order_does_not_matter_beyond_rounding():
    rng = np.random.default_rng(2)
    a, b = RunningMeanStd.of(rng.normal(size=(30, 3))), RunningMeanStd.of(rng.normal(5, 1, size=(10, 3)))
    ab, ba = a.merge(b), b.merge(a)
    np.testing.assert_allclose(ab.mean, ba.mean)
    np.testing.assert_allclose(ab.var, ba.var)


def test_fresh_stats_normalise_as_identity_and_clip():
    s = RunningMeanStd.zeros(2)
    np.testing.assert_allclose(s.normalize(np.array([[0.5, -2.0]])), [[0.5, -2.0]], rtol=1e-6)
    assert s.normalize(np.array([[1e6, -1e6]])).tolist() == [[CLIP, -CLIP]]


def test_round_trip_through_dict():
    s = RunningMeanStd.of(np.random.default_rng(3).normal(size=(8, 2)))
    t = RunningMeanStd.from_dict(s.to_dict())
    assert np.array_equal(s.mean, t.mean) and np.array_equal(s.var, t.var) and s.count == t.count
