"""Draws fetched ahead: the next step's replay batches move over MPI while the step computes.

Design notes: docs/design.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ptycl.rehearsal.samples import ReplaySamples


@dataclass
class PendingDraw:
    size: int  # the n of the draw(n) it answers
    rng_state: dict[str, Any]  # the draw RNG's state before this draw picked its slots
    result: Future[ReplaySamples | None]


class DrawPrefetcher:
    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycl-store-prefetch")
        self._pending: deque[PendingDraw] = deque()
        self._sizes_this_step: list[int] = []

    def note_draw(self, size: int) -> None:
        """A draw(size) was asked: the pattern to prefetch after the next offer."""
        self._sizes_this_step.append(size)

    def step_pattern(self) -> list[int]:
        """The draw sizes asked since the last call (the last step's draws), oldest first."""
        sizes, self._sizes_this_step = self._sizes_this_step, []
        return sizes

    def issue(
        self, size: int, rng_state: dict[str, Any], fetch: Callable[[], ReplaySamples | None]
    ) -> None:
        self._pending.append(PendingDraw(size, rng_state, self._worker.submit(fetch)))

    def take(self, size: int) -> PendingDraw | None:
        """The oldest pending draw if it answers draw(size), else None."""
        if self._pending and self._pending[0].size == size:
            return self._pending.popleft()
        return None

    def oldest_rng_state(self) -> dict[str, Any] | None:
        """The draw RNG's state before the first draw not yet taken (what a checkpoint keeps)."""
        return self._pending[0].rng_state if self._pending else None

    def settle(self) -> None:
        """Wait for every pending exchange and drop its result.

        Called before anything writes the shard or runs another exchange, so that no
        exchange reads a row while it is overwritten; an exchange that failed raises here.
        """
        while self._pending:
            self._pending.popleft().result.result()

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self._worker.shutdown(wait=True)
