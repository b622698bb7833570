"""A rehearsal store in one process: preallocated rows, a slot table, a selection policy.

With the default ``reservoir`` policy (Algorithm R) every sample offered so far has the same
probability, capacity / seen, of being held, from the first sample on: the first
``capacity`` samples fill the store, and the t-th sample after that replaces a uniformly
chosen held one with probability capacity / t. ``balanced`` and ``loss_aware`` are the other
policies (``ptycl.rehearsal.policies``); they mean the same here as in the distributed store,
which runs the same decisions on the global stream.

Decisions and draws take their uniforms from one numpy Generator whose state is part of the
checkpoint, so a resumed run decides and draws exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptycl.rehearsal import select
from ptycl.rehearsal.errors import StoreRestoreError
from ptycl.rehearsal.policies import Policy, decide, scores_samples
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.shard import PLANES, PayloadShard, pack, unpack
from ptycl.rehearsal.slot_table import Candidates, SlotTable, table_bytes_per_slot
from ptycl.rehearsal.store import RehearsalStore

_BOOKKEEPING_BYTES = table_bytes_per_slot(scored=False)  # scan_index + step, int64 each


def samples_for_bytes(
    capacity_bytes: int,
    frame_shape: tuple[int, int],
    half_precision: bool,
    bookkeeping_bytes: int = _BOOKKEEPING_BYTES,
) -> int:
    """How many samples fit in a byte budget: 5 planes (input, 2 labels, 2 outputs) + bookkeeping."""
    element = 2 if half_precision else 4
    per_sample = PLANES * frame_shape[0] * frame_shape[1] * element + bookkeeping_bytes
    return max(1, capacity_bytes // per_sample)


class LocalReservoirStore(RehearsalStore):
    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int],
        *,
        policy: Policy = "reservoir",
        half_precision: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.policy = policy
        self.frame_shape = frame_shape
        self._table = SlotTable.empty(capacity, scored=scores_samples(policy))
        self._shard = PayloadShard(capacity, frame_shape, half_precision=half_precision, device=device)
        self._rng = np.random.default_rng(seed)

    @property
    def capacity(self) -> int:
        return self._table.capacity

    @property
    def seen(self) -> int:
        return self._table.seen

    @property
    def storage_dtype(self) -> torch.dtype:
        return self._shard.dtype

    def __len__(self) -> int:
        return self._table.held

    def sample_nbytes(self) -> int:
        return self._shard.row_nbytes + self._table.bytes_per_slot

    def offer(self, samples: ReplaySamples, losses: torch.Tensor | None = None) -> int:
        batch = Candidates.of(samples, losses)
        writes = decide(self.policy, self._table, batch, self._rng)
        self._table.apply(writes, batch)
        rows = torch.from_numpy(writes.candidates).to(samples.inputs.device)
        self._shard.write(writes.slots, pack(samples.take(rows), self._shard.dtype))
        return len(writes)

    def draw(self, n: int) -> ReplaySamples | None:
        held = self._table.held
        if held == 0:
            return None
        slots = select.draw_without_replacement(held, n, select.draw_uniforms(self._rng, min(n, held)))
        return unpack(self._shard.read(slots), self._table.scan_index[slots], self._table.step[slots])

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "table": self._table.state_dict(),
            "rng": self._rng.bit_generator.state,
            # Only the filled rows: a checkpoint of a young store stays small.
            "rows": self._shard.planes[: self._table.held].cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        table = SlotTable.from_state(state["table"])
        if table.capacity != self.capacity:
            raise StoreRestoreError(f"store capacity {table.capacity} in the checkpoint, {self.capacity} configured")
        if state["policy"] != self.policy:
            raise StoreRestoreError(f"store policy {state['policy']!r} in the checkpoint, {self.policy!r} configured")
        self._table = table
        self._rng.bit_generator.state = state["rng"]
        rows = state["rows"]
        self._shard.write(np.arange(len(rows)), rows)
