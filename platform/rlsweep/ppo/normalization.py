"""Running mean and variance of observations, mergeable across workers (Chan et al.'s parallel update)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP = 10.0
EPS = 1e-8


@dataclass
class RunningMeanStd:
    """Mean and variance over every observation seen so far.

    Starts from a tiny pseudo-count so the first normalisation is the identity, as Stable-Baselines3's
    VecNormalize does.
    """

    mean: np.ndarray
    var: np.ndarray
    count: float = 1e-4

    @classmethod
    def zeros(cls, dim: int) -> RunningMeanStd:
        """Statistics of `dim`-sized observations before any are seen: mean 0, variance 1."""
        return cls(mean=np.zeros(dim, np.float64), var=np.ones(dim, np.float64))

    @classmethod
    def of(cls, x: np.ndarray) -> RunningMeanStd:
        """The moments of a batch, shaped (..., dim)."""
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        return cls(mean=x.mean(axis=0), var=x.var(axis=0), count=float(x.shape[0]))

    def merge(self, other: RunningMeanStd) -> RunningMeanStd:
        """The moments of the union of both samples."""
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / total
        m2 = self.var * self.count + other.var * other.count + delta**2 * self.count * other.count / total
        return RunningMeanStd(mean=mean, var=m2 / total, count=total)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """`x` standardised feature by feature, clipped to [-CLIP, CLIP], as float32 for the policy."""
        z = (x - self.mean) / np.sqrt(self.var + EPS)
        return np.clip(z, -CLIP, CLIP).astype(np.float32)

    def to_dict(self) -> dict:
        """A JSON-able form (a checkpoint's state.json holds it); `from_dict` reads it back."""
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> RunningMeanStd:
        """Inverse of `to_dict`."""
        return cls(mean=np.asarray(d["mean"], np.float64), var=np.asarray(d["var"], np.float64), count=d["count"])


def normalize_each(stats: list[RunningMeanStd], x: np.ndarray) -> np.ndarray:
    """(K, ..., dim) observations, agent k's standardised by `stats[k]` (see `RunningMeanStd.normalize`)."""
    return np.stack([s.normalize(xk) for s, xk in zip(stats, x, strict=True)])
