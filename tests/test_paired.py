"""Paired-seed intervals against scipy.stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ptycl.eval.paired import log_ratio_interval, mean_interval


def test_mean_interval_is_scipys_t_interval():
    values = [0.12, 0.18, 0.09, 0.15, 0.11]
    interval = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, np.mean(values), stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-12)
    assert interval.seeds == 5


def test_log_ratio_interval_is_the_t_interval_of_the_log_ratios_back_on_the_ratio_scale():
    a = np.array([0.10, 0.12, 0.09, 0.11, 0.13])
    b = np.array([0.08, 0.11, 0.08, 0.10, 0.10])
    logs = np.log(a / b)
    low, high = stats.t.interval(0.95, 4, logs.mean(), stats.sem(logs))
    interval = log_ratio_interval(a, b)
    assert interval.mean == pytest.approx(math.exp(logs.mean()))
    assert (interval.low, interval.high) == pytest.approx((math.exp(low), math.exp(high)))
    # the geometric mean ratio: swapping the two inverts it
    swapped = log_ratio_interval(b, a)
    assert swapped.mean == pytest.approx(1 / interval.mean)
    assert swapped.high == pytest.approx(1 / interval.low)


def test_one_seed_has_no_interval_and_bad_input_is_refused():
    single = log_ratio_interval([0.2], [0.1])
    assert single.mean == pytest.approx(2.0)
    assert math.isnan(single.low) and math.isnan(single.high)
    assert single.to_dict()["low"] is None
    with pytest.raises(ValueError, match="positive"):
        log_ratio_interval([0.1, 0.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="one per seed"):
        mean_interval([])
