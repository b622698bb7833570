"""Balanced quotas per group (class-balanced reservoir, Chrysakis & Moens 2020).

Design notes: docs/design.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ptycl.kernels.gpu import cupy, raw_kernel


@njit(cache=True)
def _decide(slot_free, n_free, members, start, held, seen, capacity, cand_group, uniforms, slots):
    """The sequential decisions, writing ``slots``; ``held`` and ``seen`` are updated."""
    n_groups = held.size
    n_active = 0
    for g in range(n_groups):
        if held[g] > 0:
            n_active += 1
    next_free = 0
    for c in range(cand_group.size):
        g = cand_group[c]
        u = uniforms[c]
        if next_free < n_free:
            slot = slot_free[next_free]
            next_free += 1
        else:
            quota = capacity // (n_active + (1 if held[g] == 0 else 0))
            if held[g] >= quota:
                t = seen[g]
                j = min(np.int64(np.floor(u * np.float64(t + 1))), t)
                if j < held[g]:
                    slots[c] = members[start[g] + j]
                seen[g] += 1
                continue
            richest = 0
            for h in range(1, n_groups):
                if held[h] > held[richest]:
                    richest = h
            r = min(np.int64(np.floor(u * np.float64(held[richest]))), held[richest] - 1)
            slot = members[start[richest] + r]
            held[richest] -= 1
            members[start[richest] + r] = members[start[richest] + held[richest]]
            if held[richest] == 0:
                n_active -= 1
        if held[g] == 0:
            n_active += 1
        members[start[g] + held[g]] = slot
        held[g] += 1
        seen[g] += 1
        slots[c] = slot


@njit(cache=True)
def balanced_slots_cpu(slot_group, group_seen, cand_group, uniforms):
    """Slot each candidate writes, -1 when rejected.

    slot_group (capacity,): group of each slot, -1 when free; group_seen (G,): items each
    group offered so far; cand_group (n,): the candidates' groups in [0, G).
    """
    capacity = slot_group.size
    n_groups = group_seen.size
    held = np.zeros(n_groups, dtype=np.int64)
    incoming = np.zeros(n_groups, dtype=np.int64)
    n_free = 0
    for s in range(capacity):
        if slot_group[s] >= 0:
            held[slot_group[s]] += 1
        else:
            n_free += 1
    for c in range(cand_group.size):
        incoming[cand_group[c]] += 1
    # Group g's members live in members[start[g] : start[g] + held[g]], with room after them
    # for each of its candidates in the batch (a group grows by at most one per candidate).
    start = np.empty(n_groups, dtype=np.int64)
    room = 0
    for g in range(n_groups):
        start[g] = room
        room += held[g] + incoming[g]
    members = np.empty(room, dtype=np.int64)
    slot_free = np.empty(n_free, dtype=np.int64)
    filled = np.zeros(n_groups, dtype=np.int64)
    n_free = 0
    for s in range(capacity):
        g = slot_group[s]
        if g >= 0:
            members[start[g] + filled[g]] = s
            filled[g] += 1
        else:
            slot_free[n_free] = s
            n_free += 1
    slots = np.full(cand_group.size, -1, dtype=np.int64)
    _decide(
        slot_free,
        n_free,
        members,
        start,
        held,
        group_seen.copy(),
        capacity,
        cand_group,
        uniforms,
        slots,
    )
    return slots


_QUOTAS_CUDA = r"""
// One thread: each decision depends on the counts left by the one before. The O(capacity)
// layout of the members is built beforehand by parallel CuPy operations.
extern "C" __global__ void decide(
        const long long* slot_free, long long n_free, long long* members,
        const long long* start, long long* held, long long* seen, long long n_groups,
        long long capacity, const long long* cand_group, const double* uniforms, long long n,
        long long* slots) {
    long long n_active = 0;
    for (long long g = 0; g < n_groups; ++g) n_active += held[g] > 0;
    long long next_free = 0;
    for (long long c = 0; c < n; ++c) {
        long long g = cand_group[c];
        double u = uniforms[c];
        long long slot;
        if (next_free < n_free) {
            slot = slot_free[next_free++];
        } else {
            long long quota = capacity / (n_active + (held[g] == 0 ? 1 : 0));
            if (held[g] >= quota) {
                long long t = seen[g];
                long long j = (long long)floor(u * (double)(t + 1));
                if (j > t) j = t;
                if (j < held[g]) slots[c] = members[start[g] + j];
                seen[g] += 1;
                continue;
            }
            long long richest = 0;
            for (long long h = 1; h < n_groups; ++h)
                if (held[h] > held[richest]) richest = h;
            long long r = (long long)floor(u * (double)held[richest]);
            if (r > held[richest] - 1) r = held[richest] - 1;
            slot = members[start[richest] + r];
            held[richest] -= 1;
            members[start[richest] + r] = members[start[richest] + held[richest]];
            if (held[richest] == 0) n_active -= 1;
        }
        if (held[g] == 0) n_active += 1;
        members[start[g] + held[g]] = slot;
        held[g] += 1;
        seen[g] += 1;
        slots[c] = slot;
    }
}
"""


def balanced_slots_gpu(slot_group, group_seen, cand_group, uniforms):
    """GPU twin of ``balanced_slots_cpu``."""
    cp = cupy()
    capacity, n_groups, n = slot_group.size, group_seen.size, cand_group.size
    # Stable sort by group: free slots (-1) first, then each group's slots in slot order,
    # the same layout the Numba twin builds by counting.
    by_group = cp.argsort(slot_group)
    held = cp.bincount(slot_group + 1, minlength=n_groups + 1)[1:].astype(cp.int64)
    incoming = cp.bincount(cand_group, minlength=n_groups).astype(cp.int64)
    n_free = capacity - int(held.sum())
    room = held + incoming
    start = cp.cumsum(room) - room
    held_slots = by_group[n_free:]
    groups = slot_group[held_slots]
    rank_in_group = cp.arange(held_slots.size, dtype=cp.int64) - (cp.cumsum(held) - held)[groups]
    members = cp.empty(int(room.sum()), dtype=cp.int64)
    members[start[groups] + rank_in_group] = held_slots
    slots = cp.full(n, -1, dtype=cp.int64)
    args = (
        by_group[:n_free].copy(),
        np.int64(n_free),
        members,
        start,
        held,
        group_seen.astype(cp.int64, copy=True),
        np.int64(n_groups),
        np.int64(capacity),
        cand_group,
        uniforms,
        np.int64(n),
        slots,
    )
    raw_kernel(_QUOTAS_CUDA, "decide")((1,), (1,), args)
    return slots
