"""Comparisons over paired seeds: every strategy runs on the same streams (simulation seed and
run seed together), so each stream gives one ratio between two strategies, and the ratios of
the streams give the comparison with its uncertainty.

A ratio of errors is compared on the log scale (a run twice as good and one twice as bad
cancel), as the mean log-ratio over the seeds with a Student-t 95% confidence interval
(n - 1 degrees of freedom), reported back on the ratio scale: exp(mean), exp(low), exp(high).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its confidence interval; NaN bounds with fewer than 2 seeds."""

    mean: float
    low: float
    high: float
    seeds: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.low):
            return f"{self.mean:.{digits}f} (1 seed: no interval)"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` (one per seed) with its two-sided t-interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"mean_interval needs finite values, one per seed; got {values!r}")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, int(x.size))
    half = stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(mean, float(mean - half), float(mean + half), int(x.size))


def log_ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = CONFIDENCE
) -> Interval:
    """The ratio numerator / denominator over paired seeds: exp of the mean log-ratio and of
    its t-interval's ends."""
    a, b = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if a.shape != b.shape or (a <= 0).any() or (b <= 0).any():
        raise ValueError("log_ratio_interval needs positive values, paired seed by seed")
    return ratio_of_logs(np.log(a / b), confidence)


def ratio_of_logs(log_ratios: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """``mean_interval`` of log-ratios, back on the ratio scale."""
    interval = mean_interval(log_ratios, confidence)
    return Interval(
        math.exp(interval.mean), math.exp(interval.low), math.exp(interval.high), interval.seeds
    )
