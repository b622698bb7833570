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
from ptycl.rehearsal.packed_rows import pack_rows, unpack_rows
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
    """How many samples fit in a byte budget: 5 planes (input, 2 labels, 2 outputs) + bookkeeping
    (0 when not even one does)."""
    element = 2 if half_precision else 4
    per_sample = PLANES * frame_shape[0] * frame_shape[1] * element + bookkeeping_bytes
    return capacity_bytes // per_sample


def samples_per_rank_for_bytes(
    capacity_bytes: int,
    frame_shape: tuple[int, int],
    *,
    half_precision: bool,
    policy: Policy,
    ranks: int,
) -> int:
    """Samples per rank of a distributed store that fit a per-rank byte budget: the rank's
    rows, plus the slot table every rank keeps for all ranks' slots (``ranks`` table entries
    per row held here). Here, not in distributed_store, so sizing a store needs no MPI."""
    table_bytes = ranks * table_bytes_per_slot(scores_samples(policy))
    return samples_for_bytes(
        capacity_bytes, frame_shape, half_precision, bookkeeping_bytes=table_bytes
    )


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
        self._shard = PayloadShard(
            capacity, frame_shape, half_precision=half_precision, device=device
        )
        self._rng = np.random.default_rng(seed)

    @property
    def capacity(self) -> int:
        return self._table.capacity

    @property
    def seen(self) -> int:
        return self._table.seen

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
        slots = select.draw_without_replacement(
            held, n, select.draw_uniforms(self._rng, min(n, held))
        )
        return unpack(
            self._shard.read(slots), self._table.scan_index[slots], self._table.step[slots]
        )

    def state_dict(self) -> dict[str, Any]:
        held = self._table.held
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "policy": self.policy,
            "rng": self._rng.bit_generator.state,
            # Only the filled slots (0 .. held - 1): a checkpoint of a young store stays small.
            "held": {
                "rows": pack_rows(self._shard.planes[:held]),
                "scan_index": torch.from_numpy(self._table.scan_index[:held].copy()),
                "step": torch.from_numpy(self._table.step[:held].copy()),
                "score": None
                if self._table.score is None
                else torch.from_numpy(self._table.score[:held].copy()),
            },
            "scan_seen": torch.from_numpy(self._table.scan_seen.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise StoreRestoreError(
                f"store capacity {state['capacity']} in the checkpoint, {self.capacity} configured"
            )
        if state["policy"] != self.policy:
            raise StoreRestoreError(
                f"store policy {state['policy']!r} in the checkpoint, {self.policy!r} configured"
            )
        saved = state["held"]
        held = len(saved["step"])
        table = SlotTable.empty(self.capacity, scored=scores_samples(self.policy))
        table.seen = int(state["seen"])
        table.scan_index[:held] = saved["scan_index"].numpy()
        table.step[:held] = saved["step"].numpy()
        if table.score is not None:
            table.score[:held] = saved["score"].numpy()
        table.scan_seen = state["scan_seen"].numpy().astype(np.int64)
        self._table = table
        self._rng.bit_generator.state = state["rng"]
        if "rows" in saved:
            rows = unpack_rows(saved["rows"])
        else:  # a checkpoint from before the rows were packed
            rows = torch.cat([saved["inputs"], saved["labels"], saved["outputs"]], dim=1)
        self._shard.write(np.arange(held), rows)
