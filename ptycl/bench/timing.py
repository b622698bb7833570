"""Throughput measurement shared by the benchmark suites."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

K = TypeVar("K")
T = TypeVar("T")


def items_per_second(
    call: Callable[[], Any],
    items: int,
    seconds: float,
    sync: Callable[[], None] = lambda: None,
) -> float:
    """Items per second: best of 3 rounds of at least ``seconds`` each, after a warm-up call.

    ``sync`` waits for queued device work (a CUDA stream); it is called every 8 calls so the
    clock is read only when the work it times has finished.
    """
    call()  # compile / load the cache, allocate
    sync()
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            if calls % 8 == 0:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
        best = max(best, calls * items / elapsed)
    return best


def interleaved_rounds(calls: Mapping[K, Callable[[], T]], rounds: int) -> dict[K, list[T]]:
    """What each call returns in each of ``rounds`` rounds, the calls taking turns in a round.

    Variants measured round by round, not one after the other, so that drifting machine load
    (other jobs on a shared machine, clocks) hits them all alike and their ratios hold. One
    warm-up round comes first (compilation, allocation, caches) and is not returned. Under MPI
    every rank must pass the same calls in the same order (the calls may be collective).
    """
    results: dict[K, list[T]] = {key: [] for key in calls}
    for round_index in range(rounds + 1):
        for key, call in calls.items():
            value = call()
            if round_index > 0:
                results[key].append(value)
    return results
