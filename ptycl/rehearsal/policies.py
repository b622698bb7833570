"""Which offered samples a store keeps, and which held ones they replace.

Design notes: docs/design.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from ptycl.rehearsal import select
from ptycl.rehearsal.slot_table import Candidates, SlotTable, Writes

Policy = Literal["reservoir", "balanced", "loss_aware"]
POLICIES: tuple[Policy, ...] = get_args(Policy)

# A loss of exactly zero would make an infinite eviction weight; below this floor samples
# are equally easy.
_LOSS_FLOOR = 1e-12


def scores_samples(policy: Policy) -> bool:
    """Whether the policy keeps a score per slot (the loss at insertion)."""
    return policy == "loss_aware"


def decide(policy: Policy, table: SlotTable, batch: Candidates, rng: np.random.Generator) -> Writes:
    """The writes for ``batch``; consumes random numbers from ``rng`` only when the batch is not empty."""
    if policy not in _DECIDERS:
        raise ValueError(f"unknown store policy {policy!r}; one of {', '.join(POLICIES)}")
    if len(batch) == 0:
        return Writes(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return _DECIDERS[policy](table, batch, rng)


def _last_writers(slots: np.ndarray) -> Writes:
    # A batch is decided as if its candidates came one after another: when two name the
    # same slot, the later one is what the slot holds at the end.
    slot_index, candidate_index = select.last_writer_per_slot(slots)
    return Writes(slot_index.astype(np.int64), candidate_index.astype(np.int64))


def _reservoir(table: SlotTable, batch: Candidates, rng: np.random.Generator) -> Writes:
    uniforms = select.draw_uniforms(rng, len(batch))
    return _last_writers(select.reservoir_slots(table.seen, table.capacity, uniforms))


def _balanced(table: SlotTable, batch: Candidates, rng: np.random.Generator) -> Writes:
    scans = max(len(table.scan_seen), int(batch.scan_index.max()) + 1)
    if scans > table.capacity:
        raise ValueError(
            f"the balanced policy needs at least one slot per scan: scan index {scans - 1} "
            f"arrived and the store has {table.capacity} slots"
        )
    scan_seen = np.zeros(scans, dtype=np.int64)
    scan_seen[: len(table.scan_seen)] = table.scan_seen
    uniforms = select.draw_uniforms(rng, len(batch))
    return _last_writers(
        select.balanced_slots(table.scan_index, scan_seen, batch.scan_index, uniforms)
    )


def _loss_aware(table: SlotTable, batch: Candidates, rng: np.random.Generator) -> Writes:
    if np.isnan(batch.loss).any():
        raise ValueError(
            "the loss_aware policy needs the per-sample losses: offer(samples, losses)"
        )
    if table.score is None:
        raise ValueError("a loss-aware store keeps a score per slot: SlotTable.empty(scored=True)")
    uniforms = select.draw_uniforms(rng, len(batch))
    slots = select.reservoir_slots(table.seen, table.capacity, uniforms)
    stream_index = table.seen + np.arange(len(batch))
    # Algorithm R's answer stands while the store fills (slot t for item t); after that an
    # accepted candidate replaces a victim drawn by weight instead of the uniform slot j.
    late = (stream_index >= table.capacity) & (slots >= 0)
    if late.any():
        filling = stream_index < table.capacity
        score = table.score.copy()
        score[slots[filling]] = batch.loss[filling]  # samples filling slots in this batch count too
        weights = 1.0 / np.maximum(score, _LOSS_FLOOR)
        exponentials = select.draw_exponentials(rng, table.capacity)
        accepted = int(late.sum())
        victims = select.weighted_victims(weights, exponentials, min(accepted, table.capacity))
        # Distinct victims among what is held; a slot filled earlier in this batch may be one
        # of them, and the later (evicting) candidate then wins it. A batch accepting more
        # candidates than there are slots reuses the victims in turn: its last ones stay.
        slots[late] = np.resize(victims, accepted)
    return _last_writers(slots)


_DECIDERS: dict[str, Callable[[SlotTable, Candidates, np.random.Generator], Writes]] = {
    "reservoir": _reservoir,
    "balanced": _balanced,
    "loss_aware": _loss_aware,
}
