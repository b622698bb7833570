"""Batched reservoir insertion, Algorithm R (Vitter 1985), and last-writer-wins resolution.

Stream item t (0-based) goes to slot t while the reservoir fills; afterwards it replaces the
slot j = floor(u * (t + 1)) when j < capacity, else it is rejected. Every item seen then
sits in the reservoir with probability capacity / items seen.

Within one batch two candidates may draw the same slot; Algorithm R is sequential, so the
later one wins. ``last_writer_wins`` turns a batch's slots into writes the store performs
once per slot, in any order, with the same end state as the sequential algorithm.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ptycl.kernels.gpu import cupy, launch_1d, raw_kernel


@njit(cache=True, parallel=True)
def reservoir_slots_cpu(seen, capacity, uniforms):
    """Slot of each candidate, -1 when rejected; candidate i is stream item ``seen + i``."""
    n = uniforms.size
    slots = np.empty(n, dtype=np.int64)
    for i in prange(n):
        t = seen + i
        if t < capacity:
            slots[i] = t
        else:
            # u < 1, but u * (t + 1) can round up to t + 1 for large t: clamp to t.
            j = min(np.int64(np.floor(uniforms[i] * np.float64(t + 1))), t)
            slots[i] = j if j < capacity else -1
    return slots


@njit(cache=True)
def last_writer_wins_cpu(slots, capacity):
    """``slots`` with every entry overwritten by a later candidate of the batch set to -1."""
    owner = np.full(capacity, -1, dtype=np.int64)
    for i in range(slots.size):
        if slots[i] >= 0:
            owner[slots[i]] = i
    final = np.empty_like(slots)
    for i in range(slots.size):
        s = slots[i]
        final[i] = s if s >= 0 and owner[s] == i else -1
    return final


_RESERVOIR_CUDA = r"""
extern "C" __global__ void reservoir_slots(
        const double* uniforms, long long n, long long seen, long long capacity,
        long long* slots) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long t = seen + i;
    if (t < capacity) { slots[i] = t; return; }
    long long j = (long long)floor(uniforms[i] * (double)(t + 1));
    if (j > t) j = t;
    slots[i] = j < capacity ? j : -1;
}

// Sequential "later candidate wins" equals "the largest candidate index per slot wins",
// which atomicMax computes in any thread order.
extern "C" __global__ void claim_slots(const long long* slots, long long n, long long* owner) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long s = slots[i];
    if (s >= 0) atomicMax(&owner[s], i);
}

extern "C" __global__ void keep_last_writers(
        const long long* slots, long long n, const long long* owner, long long* final_slots) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long s = slots[i];
    final_slots[i] = (s >= 0 && owner[s] == i) ? s : -1;
}
"""


def reservoir_slots_gpu(seen, capacity, uniforms):
    """GPU twin of ``reservoir_slots_cpu`` (float64 CuPy uniforms, int64 CuPy slots)."""
    cp = cupy()
    n = uniforms.size
    slots = cp.empty(n, dtype=cp.int64)
    args = (uniforms, np.int64(n), np.int64(seen), np.int64(capacity), slots)
    launch_1d(raw_kernel(_RESERVOIR_CUDA, "reservoir_slots"), n, args)
    return slots


def last_writer_wins_gpu(slots, capacity):
    """GPU twin of ``last_writer_wins_cpu``."""
    cp = cupy()
    n = slots.size
    owner = cp.full(capacity, -1, dtype=cp.int64)
    launch_1d(raw_kernel(_RESERVOIR_CUDA, "claim_slots"), n, (slots, np.int64(n), owner))
    final = cp.empty_like(slots)
    args = (slots, np.int64(n), owner, final)
    launch_1d(raw_kernel(_RESERVOIR_CUDA, "keep_last_writers"), n, args)
    return final
