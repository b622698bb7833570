"""Throughput of the sample-selection kernels, through ``ptycl.rehearsal.select``.

The workload is one rank's store late in a stream: ``CAPACITY`` slots all full, ten times as
many items seen, batches of ``BATCH`` candidates (so most candidates are rejected, as in
steady state). Each kernel's rate counts the items it decides on per second: candidates
offered, slots scanned (eviction), indices drawn (replay). Calls go through the public
dispatch layer, its argument checks included; random draws are made beforehand.

Numba rates are taken with one thread (the per-core figure, the target: 5 M candidates/s)
and with all of Numba's threads; only the parallel kernels differ. CuPy rates are taken
when a CUDA device is present and recorded as not measured otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from ptycl.bench.timing import items_per_second
from ptycl.kernels import gpu_available
from ptycl.rehearsal import select

CAPACITY = 65_536
BATCH = 4_096
GROUPS = 16
VICTIMS = 256
REPLAY_DRAW = 1_024
TARGET_PER_CORE = 5e6


def _workload(xp: Any, rng: Any) -> dict[str, tuple[Callable[[], Any], int, str]]:
    """name -> (call, items decided per call, unit), inputs drawn once with ``rng``."""
    seen = 10 * CAPACITY
    u = rng.random(BATCH)
    slots = select.reservoir_slots(seen, CAPACITY, u)
    # Steady state of a random-key reservoir after `seen` items: held keys are the top
    # CAPACITY of `seen` uniforms, i.e. uniform above 1 - CAPACITY / seen.
    held_keys = 1 - (CAPACITY / seen) * rng.random(CAPACITY)
    cand_keys = rng.random(BATCH)
    other_rank_keys = 1 - (CAPACITY / seen) * rng.random(CAPACITY)
    slot_group = xp.asarray(np.arange(CAPACITY) % GROUPS)
    group_seen = xp.full(GROUPS, seen // GROUPS, dtype=xp.int64)
    cand_group = xp.asarray(np.arange(BATCH) % GROUPS)
    weights = 1.0 / (0.01 + rng.random(CAPACITY))  # 1 / loss
    exponentials = rng.standard_exponential(CAPACITY)
    replay_u = rng.random(REPLAY_DRAW)
    return {
        "reservoir_slots": (lambda: select.reservoir_slots(seen, CAPACITY, u), BATCH, "candidates"),
        "last_writer_per_slot": (lambda: select.last_writer_per_slot(slots), BATCH, "candidates"),
        "random_key_slots": (
            lambda: select.random_key_slots(held_keys, cand_keys),
            BATCH,
            "candidates",
        ),
        "merge_topk": (
            lambda: select.merge_topk(held_keys, other_rank_keys, CAPACITY),
            2 * CAPACITY,
            "keys merged",
        ),
        "balanced_slots": (
            lambda: select.balanced_slots(slot_group, group_seen, cand_group, u),
            BATCH,
            "candidates",
        ),
        "weighted_victims": (
            lambda: select.weighted_victims(weights, exponentials, VICTIMS),
            CAPACITY,
            "slots scanned",
        ),
        "draw_without_replacement": (
            lambda: select.draw_without_replacement(CAPACITY, REPLAY_DRAW, replay_u),
            REPLAY_DRAW,
            "indices drawn",
        ),
    }


def _numba_rates(seconds: float) -> dict[str, Any]:
    threads = numba.get_num_threads()
    work = _workload(np, np.random.default_rng(0))
    rates: dict[str, Any] = {}
    try:
        for name, (call, items, unit) in work.items():
            numba.set_num_threads(1)
            one = items_per_second(call, items, seconds)
            numba.set_num_threads(threads)
            every = items_per_second(call, items, seconds)
            rates[name] = {
                "unit": unit,
                "per_s_one_thread": one,
                "per_s_all_threads": every,
                "meets_per_core_target": one >= TARGET_PER_CORE,
            }
    finally:
        numba.set_num_threads(threads)
    versions = {"numba": numba.__version__, "numpy": np.__version__}
    return {"threads": threads, "cpu_count": os.cpu_count(), **versions, "kernels": rates}


def _cupy_rates(seconds: float) -> dict[str, Any]:
    if not gpu_available():
        return {"measured": False, "reason": "no CUDA device (or CuPy absent) on this machine"}
    import cupy

    work = _workload(cupy, cupy.random.default_rng(0))
    sync = cupy.cuda.Device().synchronize
    rates = {
        name: {"unit": unit, "per_s": items_per_second(call, items, seconds, sync)}
        for name, (call, items, unit) in work.items()
    }
    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return {"measured": True, "device": device.decode(), "kernels": rates}


def run(out_dir: Path, quick: bool, config: object | None = None) -> dict[str, Any]:
    """Measure every kernel and return the results (``ptycl bench`` writes them as JSON).

    ``config`` is accepted for the ``ptycl bench`` runner and unused: the workload is fixed
    so that figures compare across machines.
    """
    seconds = 0.05 if quick else 0.5
    result = {
        "workload": {
            "capacity": CAPACITY,
            "batch": BATCH,
            "items_seen_before": 10 * CAPACITY,
            "groups": GROUPS,
            "victims": VICTIMS,
            "replay_draw": REPLAY_DRAW,
            "seconds_per_round": seconds,
        },
        "target_per_core": TARGET_PER_CORE,
        "numba": _numba_rates(seconds),
        "cupy": _cupy_rates(seconds),
    }
    return result
