"""Random-key reservoir (Efraimidis & Spirakis 2006): keep the items with the top keys.

Every item gets an independent key when offered: a uniform draw for an unweighted sample,
or log(u) / w (the logarithm of u**(1/w), same order, no underflow) for a sample weighted by
w. The items holding the ``capacity`` largest keys of everything seen are then a uniform
(or weighted) sample without replacement. Because "the top M of a union" is exact and
associative, per-rank reservoirs merge into the global one with ``merge_topk``.

Keys rank as in ``ptycl.kernels.topk`` (larger first, ties to the lower index), and a held
item keeps its slot against a candidate with an equal key. Empty slots hold -inf.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ptycl.kernels.gpu import cupy
from ptycl.kernels.topk import topk_indices


@njit(cache=True)
def random_key_slots_cpu(slot_keys, cand_keys):
    """Slot each candidate replaces, -1 when it stays out.

    The best entering candidate replaces the lowest held key, the second best the second
    lowest, and so on, while the candidate's key beats the held one; afterwards the slots
    hold exactly the top ``len(slot_keys)`` keys of held and candidates together.
    """
    capacity = slot_keys.size
    n = cand_keys.size
    # Only candidates above the lowest held key can enter: late in a stream that is a small
    # fraction of each batch, so the sort below runs over few keys.
    threshold = slot_keys.min()
    passing = np.empty(n, dtype=np.int64)
    n_passing = 0
    for i in range(n):
        if cand_keys[i] > threshold:
            passing[n_passing] = i
            n_passing += 1
    passing = passing[:n_passing]
    k = min(n_passing, capacity)
    best_candidates = passing[topk_indices(cand_keys[passing], k)]
    worst_slots = topk_indices(-slot_keys, k)
    slots = np.full(n, -1, dtype=np.int64)
    for rank in range(k):
        c, s = best_candidates[rank], worst_slots[rank]
        # Candidates fall and held keys rise along the ranks: the first loss ends the swaps.
        if cand_keys[c] <= slot_keys[s]:
            break
        slots[c] = s
    return slots


@njit(cache=True)
def merge_topk_cpu(keys_a, keys_b, k):
    """(top ``k`` keys of a and b together, best first; their index into a ++ b)."""
    both = np.concatenate((keys_a, keys_b))
    source = topk_indices(both, k)
    return both[source], source


def random_key_slots_gpu(slot_keys, cand_keys):
    """GPU twin of ``random_key_slots_cpu``."""
    cp = cupy()
    capacity, n = slot_keys.size, cand_keys.size
    passing = cp.flatnonzero(cand_keys > slot_keys.min())
    k = min(int(passing.size), capacity)
    # cupy.argsort is stable: ascending on the negated keys is "larger first, ties to the
    # lower index", the order of topk_indices. "+ 0.0" turns -0.0 into 0.0 so that a radix
    # sort cannot split the two zeros that the Numba twin treats as equal.
    best_candidates = passing[cp.argsort(-cand_keys[passing] + 0.0)[:k]]
    worst_slots = cp.argsort(slot_keys + 0.0)[:k]
    enters = cand_keys[best_candidates] > slot_keys[worst_slots]
    slots = cp.full(n, -1, dtype=cp.int64)
    slots[best_candidates] = cp.where(enters, worst_slots, -1)
    return slots


def merge_topk_gpu(keys_a, keys_b, k):
    """GPU twin of ``merge_topk_cpu``."""
    cp = cupy()
    both = cp.concatenate((keys_a, keys_b))
    source = cp.argsort(-both + 0.0)[:k]
    return both[source], source
