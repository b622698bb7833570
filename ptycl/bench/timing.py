"""Throughput measurement shared by the benchmark suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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
