"""Top-k selection by a bounded heap, the building block of the key-based kernels.

Why a hand-written heap: ``np.argpartition`` inside ``@njit`` compiles far slower than this
heap (docs/performance.md), and the heap fixes the order of ties, which the twins must share.

Order used everywhere in ptycl.kernels: a larger key ranks higher; equal keys rank by
position, the lower index first. This is also the order a stable ascending sort of the
negated keys gives, which is how the CuPy twins reproduce it (``cupy.argsort`` is stable).
Keys must not be NaN; -0.0 and 0.0 are equal.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _ranks_below(key_a, index_a, key_b, index_b):
    """True when item a ranks below item b (smaller key, or equal key and later)."""
    return key_a < key_b or (key_a == key_b and index_a > index_b)


@njit(cache=True)
def _sift_down(heap_key, heap_index, size, pos):
    # A min-heap by rank: heap[0] is the lowest-ranked item held, the one a newcomer
    # displaces. Keys sit next to their indices so comparisons read no other array.
    key, index = heap_key[pos], heap_index[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _ranks_below(
            heap_key[right], heap_index[right], heap_key[child], heap_index[child]
        ):
            child = right
        if not _ranks_below(heap_key[child], heap_index[child], key, index):
            break
        heap_key[pos], heap_index[pos] = heap_key[child], heap_index[child]
        pos = child
    heap_key[pos], heap_index[pos] = key, index


@njit(cache=True)
def topk_indices(keys, k):
    """Indices of the ``k`` highest-ranked keys, best first (``min(k, len(keys))`` of them).

    O(n log k); a key that does not beat the current k-th best costs one comparison, so a
    pass over mostly-losing keys runs at about the speed of reading them.
    """
    n = keys.size
    k = min(k, n)
    heap_key = keys[:k].copy()
    heap_index = np.arange(k)
    for pos in range(k // 2 - 1, -1, -1):
        _sift_down(heap_key, heap_index, k, pos)
    for i in range(k, n):
        # Ties lose to the held item: i is later than everything in the heap.
        if keys[i] > heap_key[0]:
            heap_key[0], heap_index[0] = keys[i], i
            _sift_down(heap_key, heap_index, k, 0)
    # Pop the lowest-ranked item into the back of the output until the heap is empty.
    best_first = np.empty(k, dtype=np.int64)
    for size in range(k, 0, -1):
        best_first[size - 1] = heap_index[0]
        heap_key[0], heap_index[0] = heap_key[size - 1], heap_index[size - 1]
        _sift_down(heap_key, heap_index, size - 1, 0)
    return best_first
