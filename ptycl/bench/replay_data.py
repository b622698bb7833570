"""Random replay samples, and a rehearsal store filled with them to its steady state.

Benchmarks time what a store does late in a stream: full, most offers rejected. The
contents are random; no timing depends on the values.
"""

from __future__ import annotations

import torch

from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.store import RehearsalStore

FILL_CHUNK = 64  # samples per offer while filling


def random_samples(
    n: int, frame: int, generator: torch.Generator, first_step: int = 0
) -> ReplaySamples:
    return ReplaySamples(
        inputs=torch.rand(n, 1, frame, frame, generator=generator),
        labels=torch.rand(n, 2, frame, frame, generator=generator),
        outputs=torch.rand(n, 2, frame, frame, generator=generator),
        scan_index=torch.zeros(n, dtype=torch.int64),
        step=torch.arange(first_step, first_step + n),
    )


def fill_to_steady_state(
    store: RehearsalStore, capacity_per_rank: int, frame: int, generator: torch.Generator
) -> None:
    """Offer twice the capacity (every rank alike, so collective offers pair up): full, in
    steady state."""
    for start in range(0, 2 * capacity_per_rank, FILL_CHUNK):
        store.offer(
            random_samples(FILL_CHUNK, frame, generator, start),
            torch.rand(FILL_CHUNK, generator=generator),
        )
