"""A trial's score over its agents' seeds: the interquartile mean with a bootstrap interval (pure numpy).

Agarwal et al. 2021 ("Deep RL at the edge of the statistical precipice", rliable) score a handful of
runs by the interquartile mean (IQM): the mean of the middle half, robust to the one lucky or unlucky
seed that decides a plain mean or a max, and less noisy than the median. Its uncertainty is a
percentile bootstrap interval over the seeds. With fewer than 4 seeds nothing is trimmed: the IQM is
the mean.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
_BOOTSTRAP_SEED = 0x5EED5  # a fixed stream: the same scores always give the same interval


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """The interquartile mean along `axis`: sorted, int(n / 4) values cut from each end, the rest
    averaged (scipy.stats.trim_mean(values, 0.25), as rliable computes it)."""
    x = np.sort(np.asarray(values, np.float64), axis=axis)
    n = x.shape[axis]
    cut = n // 4
    kept = np.take(x, np.arange(cut, n - cut), axis=axis)
    out = kept.mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


class Score(NamedTuple):
    """One metric over a trial's seeds."""

    iqm: float  # the interquartile mean (the mean below 4 seeds)
    low: float  # the bootstrap interval's bounds (both the value itself for one seed)
    high: float
    min: float
    max: float


def score(values: list[float] | np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL) -> Score:
    """The IQM of `values` (one per seed) with its percentile bootstrap interval at `level`, from
    `resamples` resamples of the seeds with replacement, drawn from a fixed stream (so repeatable).

    NaN in, NaN out: a seed with no value yet (no episode finished) leaves the score undefined."""
    x = np.asarray(values, np.float64)
    if x.size == 0 or np.isnan(x).any():
        nan = float("nan")
        return Score(nan, nan, nan, nan, nan)
    centre = iqm(x)
    if x.size == 1:
        return Score(centre, centre, centre, centre, centre)
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    boot = iqm(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return Score(centre, float(low), float(high), float(x.min()), float(x.max()))
