"""Sample selection for the rehearsal store: one call per kernel, run where the data lives.

Design notes: docs/design.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptycl import kernels

Array = Any  # numpy.ndarray on the CPU path, cupy.ndarray on the GPU path


def _start_numba_threads() -> None:
    """Start Numba's thread pool now, and give torch back its thread count.

    Numba's OpenMP threading layer sets OpenMP's thread count, which torch's CPU operators use
    too, to NUMBA_NUM_THREADS when its pool starts. Left to the store's first insertion, that
    would change torch's count in the middle of a run (OMP_NUM_THREADS=1, NUMBA_NUM_THREADS
    unset: step 0 on one thread, the rest on all cores), and a resumed run would no longer sum
    in the order of an uninterrupted one. Afterwards the two counts are independent.
    """
    threads = torch.get_num_threads()
    kernels.reservoir_slots_cpu(np.int64(0), np.int64(1), np.zeros(1))  # a parallel kernel
    torch.set_num_threads(threads)


_start_numba_threads()


def _on_gpu(*arrays: Array) -> bool:
    return any(hasattr(a, "__cuda_array_interface__") for a in arrays)


def _as(on_gpu: bool, array: Array, dtype: type, name: str) -> Array:
    """``array`` as a contiguous 1-D array of ``dtype`` on the chosen device."""
    if on_gpu:
        cp = kernels.gpu.cupy()
        out = cp.ascontiguousarray(cp.asarray(array), dtype=dtype)
    else:
        out = np.ascontiguousarray(np.asarray(array), dtype=dtype)
    if out.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(out.shape)}")
    return out


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _within(values: Array, low: int, high: int) -> bool:
    """All ``values`` in [low, high) (True when empty)."""
    return values.size == 0 or (int(values.min()) >= low and int(values.max()) < high)


def reservoir_slots(seen: int, capacity: int, uniforms: Array) -> Array:
    """Algorithm R for a batch: the slot of candidate i (stream item ``seen + i``), or -1.

    Item t < capacity takes slot t; later ones take slot floor(u[i] * (t + 1)) when it is
    below ``capacity``. Two candidates may get the same slot: see ``last_writer_per_slot``.
    """
    _require(seen >= 0 and capacity >= 1, f"need seen >= 0, capacity >= 1: {seen}, {capacity}")
    gpu = _on_gpu(uniforms)
    u = _as(gpu, uniforms, np.float64, "uniforms")
    twin = kernels.reservoir_slots_gpu if gpu else kernels.reservoir_slots_cpu
    return twin(seen, capacity, u)


def last_writer_per_slot(slots: Array) -> tuple[Array, Array]:
    """The writes a batch's ``slots`` resolve to: ``(slot_index, candidate_index)``.

    When several candidates of the batch name one slot, the last of them wins (the
    sequential semantics of the kernels); each slot appears once, so the store writes
    ``store[slot_index] = batch[candidate_index]`` in one step. Candidates at -1 write nothing.
    """
    gpu = _on_gpu(slots)
    s = _as(gpu, slots, np.int64, "slots")
    _require(s.size == 0 or int(s.min()) >= -1, "slots must be >= -1")
    capacity = int(s.max()) + 1 if s.size else 0  # slots only index up to the largest named
    twin = kernels.last_writer_wins_gpu if gpu else kernels.last_writer_wins_cpu
    final = twin(s, capacity)
    xp = kernels.gpu.cupy() if gpu else np
    candidate_index = xp.flatnonzero(final >= 0)
    return final[candidate_index], candidate_index


def random_key_slots(slot_keys: Array, cand_keys: Array) -> Array:
    """Random-key reservoir: the slot each candidate replaces, or -1.

    ``slot_keys`` (capacity,) are the held items' keys (-inf for an empty slot),
    ``cand_keys`` (n,) the candidates' (``draw_keys``). Afterwards the slots hold the items
    with the top ``capacity`` keys of both; the best candidate replaces the lowest key.
    Each slot is named at most once. The caller stores the candidate keys with the items.
    """
    gpu = _on_gpu(slot_keys, cand_keys)
    held = _as(gpu, slot_keys, np.float64, "slot_keys")
    offered = _as(gpu, cand_keys, np.float64, "cand_keys")
    _require(held.size >= 1, "slot_keys must hold at least one slot")
    twin = kernels.random_key_slots_gpu if gpu else kernels.random_key_slots_cpu
    return twin(held, offered)


def merge_topk(keys_a: Array, keys_b: Array, k: int) -> tuple[Array, Array]:
    """The top ``k`` keys of a and b together, best first, and where each came from.

    Returns ``(keys, source)``: ``source`` indexes the concatenation a ++ b, so
    ``source < len(keys_a)`` marks keys from a. Exact, so merging per-rank reservoirs pairwise
    in any tree gives the global top k (ties go to the lower index of a ++ b).
    """
    _require(k >= 0, f"k must be >= 0, got {k}")
    gpu = _on_gpu(keys_a, keys_b)
    a = _as(gpu, keys_a, np.float64, "keys_a")
    b = _as(gpu, keys_b, np.float64, "keys_b")
    twin = kernels.merge_topk_gpu if gpu else kernels.merge_topk_cpu
    return twin(a, b, k)


def balanced_slots(
    slot_group: Array, group_seen: Array, cand_group: Array, uniforms: Array
) -> Array:
    """Per-group balanced reservoir: the slot each candidate writes, or -1.

    ``slot_group`` (capacity,): group (scan) of each slot, -1 when free; ``group_seen`` (G,):
    items each group offered before this batch; ``cand_group`` (n,): the candidates' groups;
    ``uniforms`` (n,). Rules in ``ptycl.kernels.quotas``. Resolve the result with
    ``last_writer_per_slot``, then set ``slot_group`` of the written slots to the writing
    candidates' groups and add the batch's per-group counts to ``group_seen``.
    """
    gpu = _on_gpu(slot_group, group_seen, cand_group, uniforms)
    held = _as(gpu, slot_group, np.int64, "slot_group")
    seen = _as(gpu, group_seen, np.int64, "group_seen")
    groups = _as(gpu, cand_group, np.int64, "cand_group")
    u = _as(gpu, uniforms, np.float64, "uniforms")
    n_groups = seen.size
    _require(groups.size == u.size, "cand_group and uniforms must have the same length")
    _require(_within(groups, 0, n_groups), f"cand_group must lie in [0, {n_groups})")
    _require(_within(held, -1, n_groups), f"slot_group must lie in [-1, {n_groups})")
    _require(held.size >= n_groups, "needs at least one slot per group")
    twin = kernels.balanced_slots_gpu if gpu else kernels.balanced_slots_cpu
    return twin(held, seen, groups, u)


def weighted_victims(weights: Array, exponentials: Array, k: int) -> Array:
    """``min(k, n)`` slots to evict without replacement, each draw ∝ ``weights``.

    ``weights`` (n,) is the eviction propensity (pass 1 / loss to keep hard samples); slots
    with weight <= 0 come last, in index order. ``exponentials`` (n,) are standard
    exponential draws (``draw_exponentials``). Victims are returned in draw order.
    """
    _require(k >= 0, f"k must be >= 0, got {k}")
    gpu = _on_gpu(weights, exponentials)
    w = _as(gpu, weights, np.float64, "weights")
    e = _as(gpu, exponentials, np.float64, "exponentials")
    _require(w.size == e.size, "weights and exponentials must have the same length")
    twin = kernels.weighted_victims_gpu if gpu else kernels.weighted_victims_cpu
    return twin(w, e, k)


def draw_without_replacement(n: int, k: int, uniforms: Array) -> Array:
    """``min(k, n)`` distinct indices from [0, n), ascending: the replay draw.

    Every subset of that size is equally likely (Floyd's algorithm). ``uniforms`` holds
    ``min(k, n)`` draws; k >= n returns all n indices.
    """
    _require(n >= 0 and k >= 0, f"need n >= 0 and k >= 0, got {n}, {k}")
    gpu = _on_gpu(uniforms)
    u = _as(gpu, uniforms, np.float64, "uniforms")
    _require(u.size == min(k, n), f"need min(k, n) = {min(k, n)} uniforms, got {u.size}")
    twin = kernels.distinct_indices_gpu if gpu else kernels.distinct_indices_cpu
    return twin(n, u)


def draw_uniforms(rng: Any, n: int) -> Array:
    """n float64 uniforms in [0, 1) from a numpy or cupy ``Generator`` (on its device)."""
    return rng.random(n, dtype=np.float64)


def draw_exponentials(rng: Any, n: int) -> Array:
    """n float64 standard exponential draws from a numpy or cupy ``Generator``."""
    return rng.standard_exponential(n, dtype=np.float64)


def draw_keys(rng: Any, n: int, weights: Array | None = None) -> Array:
    """Keys for ``random_key_slots``: uniforms, or log(u ** (1 / w)) = -E / w when weighted.

    The logarithm keeps the order of u ** (1 / w) without its underflow for small w;
    weight <= 0 gives -inf, a key that never enters.
    """
    if weights is None:
        return draw_uniforms(rng, n)
    exponentials = draw_exponentials(rng, n)
    xp = kernels.gpu.cupy() if _on_gpu(exponentials) else np  # the generator's device
    w = xp.asarray(weights, dtype=np.float64)
    _require(w.shape == (n,), f"weights must have shape ({n},), got {tuple(w.shape)}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.where(w > 0, -exponentials / w, -np.inf)
