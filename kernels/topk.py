"""Top-k selection by a bounded heap, the building block of the key-based kernels.

Why a hand-written heap: ``np.argpartition`` inside ``@njit`` costs ~13 s of compile time
(FIELD-NOTES), this heap ~1 s, and it fixes the order of ties, which the twins must share.

Order used everywhere in ptycl.kernels: a larger key ranks higher; equal keys rank by
position, the lower index first. This is also the order a stable ascending sort of the
negated keys gives, which is how the CuPy twins reproduce it (``cupy.argsort`` is stable).
Keys must not be NaN; -0.0 and 0.0 are equal.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _ranks_below(keys, a, b):
    """True when item ``a`` ranks below item ``b`` (smaller key, or equal key and later)."""
    return keys[a] < keys[b] or (keys[a] == keys[b] and a > b)


@njit(cache=True)
def _sift_down(keys, heap, size, pos):
    # heap[0] is the lowest-ranked item held: the one a better newcomer displaces.
    item = heap[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _ranks_below(keys, heap[child + 1], heap[child]):
            child += 1
        if not _ranks_below(keys, heap[child], item):
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = item


@njit(cache=True)
def topk_indices(keys, k):
    """Indices of the ``k`` highest-ranked keys, best first (``min(k, len(keys))`` of them).

    O(n log k); an item that does not beat the current k-th best costs one comparison, so
    a pass over mostly-losing keys runs at about the speed of reading them.
    """
    n = keys.size
    k = min(k, n)
    heap = np.empty(k, dtype=np.int64)
    if k == 0:
        return heap
    for i in range(k):
        heap[i] = i
    for pos in range(k // 2 - 1, -1, -1):
        _sift_down(keys, heap, k, pos)
    for i in range(k, n):
        # Ties lose to the held item: i is later than everything in the heap.
        if keys[i] > keys[heap[0]]:
            heap[0] = i
            _sift_down(keys, heap, k, 0)
    # Pop the lowest-ranked item into the back of the output until the heap is empty.
    best_first = np.empty(k, dtype=np.int64)
    for size in range(k, 0, -1):
        best_first[size - 1] = heap[0]
        heap[0] = heap[size - 1]
        _sift_down(keys, heap, size - 1, 0)
    return best_first
