"""Eviction by weight: choose k victims without replacement, slot i with probability ∝ w_i.

Exponential clocks: slot i rings at E_i / w_i with E_i a standard exponential draw. The first
clock to ring is slot i with probability w_i / sum(w), and by memorylessness the k earliest
are exactly k successive draws without replacement; they are returned in ringing order.

The weight is the eviction propensity, given directly: to keep hard samples (high loss),
pass w = 1 / loss. Slots with w <= 0 (empty, pinned) ring last, at +inf, in index order, so
they are chosen only when k exceeds the slots of positive weight; k > n returns all n slots.

The twins take exponential draws rather than uniforms: -log(u) rounds differently in CUDA's
libdevice and the CPU's libm, while E / w is one IEEE division and identical on both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ptycl.kernels.gpu import cupy
from ptycl.kernels.topk import topk_indices


@njit(cache=True)
def weighted_victims_cpu(weights, exponentials, k):
    """Indices of ``min(k, n)`` victims in ringing order (earliest first)."""
    n = weights.size
    # topk_indices keeps the largest keys: the earliest ring is the largest negated time.
    negated_ring = np.empty(n, dtype=np.float64)
    for i in range(n):
        negated_ring[i] = -(exponentials[i] / weights[i]) if weights[i] > 0 else -np.inf
    return topk_indices(negated_ring, k)


def weighted_victims_gpu(weights, exponentials, k):
    """GPU twin of ``weighted_victims_cpu``."""
    cp = cupy()
    ring = cp.where(weights > 0, exponentials / weights, cp.inf)
    # Stable ascending sort = earliest first, ties to the lower index (as topk_indices);
    # "+ 0.0" maps -0.0 to 0.0, which the Numba twin already treats as equal.
    return cp.argsort(ring + 0.0)[:k]
