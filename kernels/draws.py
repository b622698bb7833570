"""Draw k distinct indices from [0, n): Floyd's algorithm (Bentley & Floyd 1987).

For j = n-k .. n-1: pick t uniform in [0, j]; take t unless already drawn, then take j
(never drawn yet: everything drawn so far is below j). Every k-subset is equally likely, in
k steps and O(k) memory, however large n is: the replay draw from a big store.

The draws come back sorted ascending (the order of a gather from the store); the set, not
the order, is the random part. k >= n returns all n indices and ignores the uniforms.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ptycl.kernels.gpu import cupy, raw_kernel


@njit(cache=True, inline="always")
def _add(table, mask, value):
    """Insert ``value`` in the open-addressing set ``table`` (-1 = empty); False if present."""
    pos = value & mask
    while table[pos] >= 0:
        if table[pos] == value:
            return False
        pos = (pos + 1) & mask
    table[pos] = value
    return True


@njit(cache=True)
def distinct_indices_cpu(n, uniforms):
    """``min(k, n)`` distinct indices in [0, n), ascending; k = ``uniforms.size``."""
    k = uniforms.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    table_size = 1
    while table_size < 2 * k:  # at most half full: short probe chains
        table_size *= 2
    table = np.full(table_size, -1, dtype=np.int64)
    drawn = np.empty(k, dtype=np.int64)
    for r in range(k):
        j = n - k + r
        # u < 1, but u * (j + 1) can round up to j + 1 for large j: clamp to j.
        t = min(np.int64(np.floor(uniforms[r] * np.float64(j + 1))), j)
        if not _add(table, table_size - 1, t):
            t = j
            _add(table, table_size - 1, t)
        drawn[r] = t
    drawn.sort()
    return drawn


_FLOYD_CUDA = r"""
__device__ bool add(long long* table, long long mask, long long value) {
    long long pos = value & mask;
    while (table[pos] >= 0) {
        if (table[pos] == value) return false;
        pos = (pos + 1) & mask;
    }
    table[pos] = value;
    return true;
}

// One thread: Floyd's steps depend on each other, and k (a replay batch) is small.
extern "C" __global__ void floyd(
        const double* uniforms, long long k, long long n, long long* table, long long mask,
        long long* drawn) {
    for (long long r = 0; r < k; ++r) {
        long long j = n - k + r;
        long long t = (long long)floor(uniforms[r] * (double)(j + 1));
        if (t > j) t = j;
        if (!add(table, mask, t)) {
            t = j;
            add(table, mask, t);
        }
        drawn[r] = t;
    }
}
"""


def distinct_indices_gpu(n, uniforms):
    """GPU twin of ``distinct_indices_cpu``."""
    cp = cupy()
    k = uniforms.size
    if k >= n:
        return cp.arange(n, dtype=cp.int64)
    table_size = 1
    while table_size < 2 * k:
        table_size *= 2
    table = cp.full(table_size, -1, dtype=cp.int64)
    drawn = cp.empty(k, dtype=cp.int64)
    args = (uniforms, np.int64(k), np.int64(n), table, np.int64(table_size - 1), drawn)
    raw_kernel(_FLOYD_CUDA, "floyd")((1,), (1,), args)
    return cp.sort(drawn)
