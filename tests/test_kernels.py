"""Sample-selection kernels: Numba twins equal plain references, samples have the right law.

Exactness: each Numba kernel is compared element for element with a plain Python/NumPy
reference on random inputs that include ties and empty slots. On a GPU, each CuPy twin is
compared element for element with its Numba twin.

Statistics: chi-square tests with fixed seeds (deterministic), rejecting at p < 0.001.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chi2, chisquare

import ptycl.kernels as K
from ptycl.rehearsal import select

P_REJECT = 0.001


def inclusion_p_value(counts: np.ndarray, trials: int, sample_size: int) -> float:
    """p-value of "each of N items is in a trial's sample with probability sample_size/N".

    Each trial picks exactly ``sample_size`` distinct items, so the counts are not
    multinomial: per trial Var = p(1-p) and Cov = -p(1-p)/(N-1). Their covariance is
    c (I - J/N) with c = T p (1-p) N/(N-1), so sum((O-E)^2)/c is chi-square with N-1 df.
    """
    n_items = counts.size
    p = sample_size / n_items
    c = trials * p * (1 - p) * n_items / (n_items - 1)
    statistic = float(np.sum((counts - trials * p) ** 2) / c)
    return float(chi2.sf(statistic, n_items - 1))


# ---- plain references ----------------------------------------------------------------------


def ref_reservoir_slots(seen, capacity, uniforms):
    slots = []
    for i, u in enumerate(uniforms):
        t = seen + i
        j = t if t < capacity else min(int(np.floor(u * float(t + 1))), t)
        slots.append(j if j < capacity else -1)
    return np.array(slots, dtype=np.int64)


def ref_last_writer_wins(slots):
    final, taken = [], set()
    for s in reversed(slots.tolist()):
        final.append(s if s >= 0 and s not in taken else -1)
        taken.add(s)
    return np.array(final[::-1], dtype=np.int64)


def ref_random_key_slots(slot_keys, cand_keys):
    """Top-M of the union under: larger key; on equal keys held before candidate, a held
    slot with a higher index before a lower one, a candidate with a lower index first."""
    capacity, n = slot_keys.size, cand_keys.size
    items = [(k, 1, s) for s, k in enumerate(slot_keys)] + [
        (k, 0, -c) for c, k in enumerate(cand_keys)
    ]
    kept = sorted(items, reverse=True)[:capacity]
    entering = sorted((-c for k, held, c in kept if not held), key=lambda c: (-cand_keys[c], c))
    kept_slots = {s for k, held, s in kept if held}
    evicted = sorted(
        (s for s in range(capacity) if s not in kept_slots), key=lambda s: (slot_keys[s], s)
    )
    slots = np.full(n, -1, dtype=np.int64)
    for c, s in zip(entering, evicted, strict=True):
        slots[c] = s
    return slots


def ref_merge_topk(keys_a, keys_b, k):
    both = np.concatenate((keys_a, keys_b))
    source = np.array(sorted(range(both.size), key=lambda i: (-both[i], i))[:k], dtype=np.int64)
    return both[source], source


def ref_balanced_slots(slot_group, group_seen, cand_group, uniforms):
    capacity = slot_group.size
    members = [[s for s in range(capacity) if slot_group[s] == g] for g in range(group_seen.size)]
    free = [s for s in range(capacity) if slot_group[s] < 0]
    seen = group_seen.tolist()
    slots = []
    for g, u in zip(cand_group.tolist(), uniforms.tolist(), strict=True):
        if free:
            slot = free.pop(0)
        else:
            active = sum(1 for m in members if m) + (not members[g])
            if len(members[g]) >= capacity // active:
                j = min(int(np.floor(u * float(seen[g] + 1))), seen[g])
                slots.append(members[g][j] if j < len(members[g]) else -1)
                seen[g] += 1
                continue
            sizes = [len(m) for m in members]
            richest = sizes.index(max(sizes))
            r = min(int(np.floor(u * float(sizes[richest]))), sizes[richest] - 1)
            slot = members[richest][r]
            members[richest][r] = members[richest][-1]  # the last member fills the hole
            members[richest].pop()
        members[g].append(slot)
        seen[g] += 1
        slots.append(slot)
    return np.array(slots, dtype=np.int64)


def ref_weighted_victims(weights, exponentials, k):
    ring = [e / w if w > 0 else np.inf for w, e in zip(weights, exponentials, strict=True)]
    return np.array(sorted(range(len(ring)), key=lambda i: (ring[i], i))[:k], dtype=np.int64)


def ref_distinct_indices(n, uniforms):
    k = uniforms.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    drawn = set()
    for r, u in enumerate(uniforms):
        j = n - k + r
        t = min(int(np.floor(u * float(j + 1))), j)
        drawn.add(j if t in drawn else t)
    return np.array(sorted(drawn), dtype=np.int64)


# ---- random inputs shared by the exactness tests ---------------------------------------------


def tied_keys(rng, n, empty_fraction=0.0):
    """Keys from a few distinct values (ties everywhere), some -inf, some exact zeros."""
    keys = rng.integers(0, 8, n).astype(np.float64) / 8
    keys[rng.random(n) < empty_fraction] = -np.inf
    return keys


def quota_state(rng, capacity, n_groups, free_fraction):
    slot_group = rng.integers(0, n_groups, capacity)
    slot_group[rng.random(capacity) < free_fraction] = -1
    held = np.bincount(slot_group[slot_group >= 0], minlength=n_groups)
    group_seen = held + rng.integers(0, 50, n_groups)
    return slot_group, group_seen


CASES = range(40)


# ---- exactness: Numba twin == reference ------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_reservoir_slots_match_reference(case):
    rng = np.random.default_rng(case)
    capacity = int(rng.integers(1, 50))
    seen = int(rng.integers(0, 3 * capacity))
    u = rng.random(int(rng.integers(0, 100)))
    slots = K.reservoir_slots_cpu(seen, capacity, u)
    np.testing.assert_array_equal(slots, ref_reservoir_slots(seen, capacity, u))
    final = K.last_writer_wins_cpu(slots, capacity)
    np.testing.assert_array_equal(final, ref_last_writer_wins(slots))
    written = final[final >= 0]
    assert len(set(written.tolist())) == written.size


def test_reservoir_large_stream_index_stays_in_range():
    # u just below 1 at t ~ 2**53: the float product rounds up to t + 1 without the clamp.
    u = np.array([np.nextafter(1.0, 0.0)] * 4)
    seen = 2**53 - 2
    slots = K.reservoir_slots_cpu(seen, 2**62, u)
    assert np.all(slots <= seen + np.arange(4))


def test_last_writer_per_slot_pairs_each_slot_with_its_last_candidate():
    slots = np.array([3, -1, 0, 3, 5, 0, 3])
    slot_index, candidate_index = select.last_writer_per_slot(slots)
    np.testing.assert_array_equal(slot_index, [5, 0, 3])
    np.testing.assert_array_equal(candidate_index, [4, 5, 6])
    empty = select.last_writer_per_slot(np.full(3, -1))
    assert empty[0].size == 0 and empty[1].size == 0


@pytest.mark.parametrize("case", CASES)
def test_random_key_slots_match_reference(case):
    rng = np.random.default_rng(case)
    capacity = int(rng.integers(1, 30))
    slot_keys = tied_keys(rng, capacity, empty_fraction=float(rng.choice([0.0, 0.3, 1.0])))
    cand_keys = tied_keys(rng, int(rng.integers(0, 60)))
    slots = K.random_key_slots_cpu(slot_keys, cand_keys)
    np.testing.assert_array_equal(slots, ref_random_key_slots(slot_keys, cand_keys))
    # After the swaps the slots hold exactly the top-M keys of held and candidates together.
    after = slot_keys.copy()
    after[slots[slots >= 0]] = cand_keys[slots >= 0]
    union = np.sort(np.concatenate((slot_keys, cand_keys)))[::-1][:capacity]
    np.testing.assert_array_equal(np.sort(after)[::-1], union)


@pytest.mark.parametrize("case", CASES)
def test_merge_topk_matches_reference(case):
    rng = np.random.default_rng(case)
    a, b = tied_keys(rng, int(rng.integers(0, 40))), tied_keys(rng, int(rng.integers(0, 40)))
    k = int(rng.integers(0, 90))
    keys, source = K.merge_topk_cpu(a, b, k)
    ref_keys, ref_source = ref_merge_topk(a, b, k)
    np.testing.assert_array_equal(keys, ref_keys)
    np.testing.assert_array_equal(source, ref_source)


def test_merge_topk_across_ranks_equals_global_top():
    rng = np.random.default_rng(7)
    shards = [rng.random(int(n)) for n in (50, 0, 80, 33)]
    top = 40
    merged = [K.merge_topk_cpu(s, np.empty(0), top)[0] for s in shards]
    while len(merged) > 1:  # pairwise tree reduction, as over MPI ranks
        merged = [
            K.merge_topk_cpu(merged[i], merged[i + 1], top)[0] for i in range(0, len(merged), 2)
        ]
    np.testing.assert_array_equal(merged[0], np.sort(np.concatenate(shards))[::-1][:top])


@pytest.mark.parametrize("case", CASES)
def test_balanced_slots_match_reference(case):
    rng = np.random.default_rng(case)
    n_groups = int(rng.integers(1, 6))
    capacity = int(rng.integers(n_groups, 40))
    slot_group, group_seen = quota_state(
        rng, capacity, n_groups, float(rng.choice([0.0, 0.2, 1.0]))
    )
    cand_group = rng.integers(0, n_groups, int(rng.integers(0, 80)))
    u = rng.random(cand_group.size)
    slots = K.balanced_slots_cpu(slot_group, group_seen, cand_group, u)
    np.testing.assert_array_equal(slots, ref_balanced_slots(slot_group, group_seen, cand_group, u))


@pytest.mark.parametrize("case", CASES)
def test_weighted_victims_match_reference(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(0, 50))
    weights = rng.integers(0, 4, n).astype(np.float64)  # zeros and ties included
    exponentials = rng.standard_exponential(n)
    exponentials[rng.random(n) < 0.1] = 0.0
    k = int(rng.integers(0, 60))
    victims = K.weighted_victims_cpu(weights, exponentials, k)
    np.testing.assert_array_equal(victims, ref_weighted_victims(weights, exponentials, k))


@pytest.mark.parametrize("case", CASES)
def test_distinct_indices_match_reference(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(0, 200))
    u = rng.random(int(rng.integers(0, 60)))
    drawn = K.distinct_indices_cpu(n, u)
    np.testing.assert_array_equal(drawn, ref_distinct_indices(n, u))
    assert drawn.size == min(u.size, n) and len(set(drawn.tolist())) == drawn.size


# ---- statistics: the samples have the promised law -------------------------------------------


def test_algorithm_r_includes_every_item_with_probability_m_over_n():
    items, capacity, batch, trials = 100, 10, 16, 4000
    rng = np.random.default_rng(11)
    counts = np.zeros(items)
    for _ in range(trials):
        store = np.full(capacity, -1)
        for seen in range(0, items, batch):
            ids = np.arange(seen, min(seen + batch, items))
            slots = select.reservoir_slots(seen, capacity, rng.random(ids.size))
            slot_index, candidate_index = select.last_writer_per_slot(slots)
            store[slot_index] = ids[candidate_index]
        counts[store] += 1
    assert inclusion_p_value(counts, trials, capacity) > P_REJECT


def test_random_keys_include_every_item_with_probability_m_over_n():
    items, capacity, batch, trials = 100, 10, 16, 4000
    rng = np.random.default_rng(12)
    counts = np.zeros(items)
    for _ in range(trials):
        keys, store = np.full(capacity, -np.inf), np.full(capacity, -1)
        for seen in range(0, items, batch):
            ids = np.arange(seen, min(seen + batch, items))
            cand_keys = select.draw_keys(rng, ids.size)
            slots = select.random_key_slots(keys, cand_keys)
            enter = slots >= 0
            keys[slots[enter]], store[slots[enter]] = cand_keys[enter], ids[enter]
        counts[store] += 1
    assert inclusion_p_value(counts, trials, capacity) > P_REJECT


def test_weighted_keys_pick_a_single_slot_in_proportion_to_weight():
    weights = np.arange(1.0, 11.0)
    rng = np.random.default_rng(13)
    trials = 20000
    counts = np.zeros(weights.size)
    for _ in range(trials):
        slots = select.random_key_slots(
            np.full(1, -np.inf), select.draw_keys(rng, weights.size, weights)
        )
        counts[np.flatnonzero(slots >= 0)] += 1
    assert chisquare(counts, trials * weights / weights.sum()).pvalue > P_REJECT


def test_distinct_indices_every_subset_equally_likely():
    n, k, trials = 6, 3, 20000
    rng = np.random.default_rng(14)
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), k))}
    counts = np.zeros(len(subsets))
    for _ in range(trials):
        drawn = select.draw_without_replacement(n, k, select.draw_uniforms(rng, k))
        counts[subsets[tuple(drawn.tolist())]] += 1  # a repeated index has no entry: KeyError
    assert chisquare(counts).pvalue > P_REJECT


def test_distinct_indices_from_a_large_range_are_uniform():
    n, k, trials = 1000, 50, 2000
    rng = np.random.default_rng(15)
    counts = np.zeros(n)
    for _ in range(trials):
        drawn = select.draw_without_replacement(n, k, rng.random(k))
        assert np.unique(drawn).size == k
        counts[drawn] += 1
    assert inclusion_p_value(counts, trials, k) > P_REJECT


def test_distinct_indices_beyond_n_returns_all():
    np.testing.assert_array_equal(
        select.draw_without_replacement(5, 9, np.full(5, 0.5)), np.arange(5)
    )


def test_weighted_victims_first_draw_in_proportion_to_weight():
    weights = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 8.0])
    rng = np.random.default_rng(16)
    trials = 20000
    counts = np.zeros(weights.size)
    for _ in range(trials):
        victims = select.weighted_victims(weights, select.draw_exponentials(rng, weights.size), 3)
        assert np.unique(victims).size == 3 and 0 not in victims  # zero weight: never before others
        counts[victims[0]] += 1
    positive = weights > 0
    expected = trials * weights[positive] / weights.sum()
    assert chisquare(counts[positive], expected).pvalue > P_REJECT


def test_weighted_victims_zero_weights_come_last_and_k_beyond_n_returns_all():
    victims = select.weighted_victims(np.array([0.0, 1.0, 0.0]), np.ones(3), 5)
    np.testing.assert_array_equal(victims, [1, 0, 2])


def run_balanced_stream(rng, capacity, group_of_item, batch):
    """Feed items (grouped as given) through balanced_slots; the store's item per slot."""
    n_groups = int(group_of_item.max()) + 1
    slot_group, slot_item = np.full(capacity, -1), np.full(capacity, -1)
    group_seen = np.zeros(n_groups, dtype=np.int64)
    for first in range(0, group_of_item.size, batch):
        groups = group_of_item[first : first + batch]
        slots = select.balanced_slots(slot_group, group_seen, groups, rng.random(groups.size))
        slot_index, candidate_index = select.last_writer_per_slot(slots)
        slot_group[slot_index] = groups[candidate_index]
        slot_item[slot_index] = first + candidate_index
        group_seen += np.bincount(groups, minlength=n_groups)
    return slot_group, slot_item


@pytest.mark.parametrize("interleaved", [False, True])
def test_balanced_quotas_equal_counts_when_oversupplied(interleaved):
    rng = np.random.default_rng(17)
    capacity, n_groups, per_group = 64, 5, 300
    group_of_item = np.repeat(np.arange(n_groups), per_group)  # scan after scan
    if interleaved:
        rng.shuffle(group_of_item)
    slot_group, _ = run_balanced_stream(rng, capacity, group_of_item, batch=32)
    counts = np.bincount(slot_group, minlength=n_groups)
    assert counts.sum() == capacity and counts.max() - counts.min() <= 1


def test_balanced_quotas_keep_each_group_a_uniform_sample():
    capacity, n_groups, per_group, trials = 12, 3, 40, 3000
    rng = np.random.default_rng(18)
    group_of_item = np.repeat(np.arange(n_groups), per_group)
    counts = np.zeros(n_groups * per_group)
    for _ in range(trials):
        _, slot_item = run_balanced_stream(rng, capacity, group_of_item, batch=16)
        counts[slot_item] += 1
    # Each group ends with capacity / n_groups members: the three groups' statistics are
    # independent chi-squares, so their sum has 3 * (per_group - 1) degrees of freedom.
    share = capacity // n_groups
    statistic = 0.0
    for g in range(n_groups):
        group_counts = counts[g * per_group : (g + 1) * per_group]
        assert group_counts.sum() == trials * share
        statistic += chi2.isf(inclusion_p_value(group_counts, trials, share), per_group - 1)
    assert chi2.sf(statistic, n_groups * (per_group - 1)) > P_REJECT


# ---- dispatch, packaging ---------------------------------------------------------------------


def test_kernels_import_as_ptycl_kernels():
    module = importlib.import_module("ptycl.kernels")
    assert module.__file__.replace("\\", "/").endswith("kernels/__init__.py")
    assert module.reservoir_slots_cpu is K.reservoir_slots_cpu


def test_select_imports_and_runs_without_cupy():
    script = (
        "import sys; sys.modules['cupy'] = None\n"  # makes 'import cupy' raise ImportError
        "import numpy as np\n"
        "from ptycl.rehearsal import select\n"
        "from ptycl.kernels import gpu_available\n"
        "assert not gpu_available()\n"
        "print(select.draw_without_replacement(10, 2, np.array([0.5, 0.25])).tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ref_distinct_indices(10, np.array([0.5, 0.25])).tolist())


def test_torch_cpu_tensors_take_the_numba_path():
    u = torch.rand(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    slots = select.reservoir_slots(15, 20, u)
    assert isinstance(slots, np.ndarray)
    np.testing.assert_array_equal(slots, ref_reservoir_slots(15, 20, u.numpy()))


def test_bad_indices_raise_instead_of_writing_out_of_bounds():
    with pytest.raises(ValueError, match="slots"):
        select.last_writer_per_slot(np.array([0, -2]))
    with pytest.raises(ValueError, match="cand_group"):
        select.balanced_slots(np.full(4, -1), np.zeros(2), np.array([2]), np.array([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        select.reservoir_slots(0, 4, np.zeros((2, 2)))


# ---- GPU: CuPy twin == Numba twin ------------------------------------------------------------


def to_gpu(*arrays):
    import cupy

    return [cupy.asarray(a) for a in arrays]


def assert_twins_equal(gpu_result, cpu_result):
    import cupy

    np.testing.assert_array_equal(cupy.asnumpy(gpu_result), cpu_result)


@pytest.mark.parametrize("case", range(10))
@pytest.mark.gpu
@pytest.mark.skipif(not K.gpu_available(), reason="needs CuPy and a CUDA device")
def test_gpu_twins_equal_numba(case):
    rng = np.random.default_rng(case)
    # Algorithm R and last writer wins, a batch large enough for many blocks and collisions.
    capacity, seen = 1000, int(rng.integers(0, 5000))
    u = rng.random(20000)
    slots = K.reservoir_slots_cpu(seen, capacity, u)
    assert_twins_equal(K.reservoir_slots_gpu(seen, capacity, *to_gpu(u)), slots)
    assert_twins_equal(
        K.last_writer_wins_gpu(*to_gpu(slots), capacity), K.last_writer_wins_cpu(slots, capacity)
    )
    # Random keys and merge, with ties, zeros and empty slots.
    slot_keys, cand_keys = tied_keys(rng, 300, 0.3), tied_keys(rng, 500)
    assert_twins_equal(
        K.random_key_slots_gpu(*to_gpu(slot_keys, cand_keys)),
        K.random_key_slots_cpu(slot_keys, cand_keys),
    )
    gpu_keys, gpu_source = K.merge_topk_gpu(*to_gpu(slot_keys, cand_keys), 400)
    cpu_keys, cpu_source = K.merge_topk_cpu(slot_keys, cand_keys, 400)
    assert_twins_equal(gpu_keys, cpu_keys)
    assert_twins_equal(gpu_source, cpu_source)
    # Balanced quotas.
    slot_group, group_seen = quota_state(rng, 500, 7, 0.1)
    cand_group, u = rng.integers(0, 7, 2000), rng.random(2000)
    assert_twins_equal(
        K.balanced_slots_gpu(*to_gpu(slot_group, group_seen, cand_group, u)),
        K.balanced_slots_cpu(slot_group, group_seen, cand_group, u),
    )
    # Weighted victims and distinct indices.
    weights, exponentials = (
        rng.integers(0, 4, 3000).astype(np.float64),
        rng.standard_exponential(3000),
    )
    assert_twins_equal(
        K.weighted_victims_gpu(*to_gpu(weights, exponentials), 200),
        K.weighted_victims_cpu(weights, exponentials, 200),
    )
    u = rng.random(256)
    assert_twins_equal(
        K.distinct_indices_gpu(100000, *to_gpu(u)), K.distinct_indices_cpu(100000, u)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not K.gpu_available(), reason="needs CuPy and a CUDA device")
def test_dispatch_keeps_cuda_inputs_on_the_gpu():
    import cupy

    u = cupy.random.default_rng(0).random(64)
    assert isinstance(select.reservoir_slots(10, 32, u), cupy.ndarray)
    if not torch.cuda.is_available():
        pytest.skip("this torch build sees no CUDA device")
    t = torch.rand(64, dtype=torch.float64, device="cuda")
    result = select.reservoir_slots(10, 32, t)
    assert isinstance(result, cupy.ndarray)
    np.testing.assert_array_equal(
        cupy.asnumpy(result), K.reservoir_slots_cpu(10, 32, t.cpu().numpy())
    )


def test_numba_threads_leave_torch_its_thread_count():
    """Numba's OpenMP pool, started by the store's first kernel, must not change the thread
    count torch computes with (a resumed run would sum in another order)."""
    script = (
        "import numpy as np, torch\n"
        "from ptycl.rehearsal import select\n"
        "before = torch.get_num_threads()\n"
        "select.reservoir_slots(10, 5, np.random.default_rng(0).random(100))\n"
        "print(before, torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1"]
