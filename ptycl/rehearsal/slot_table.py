"""The store's bookkeeping per slot, and the records a policy reads and writes.

A store has ``capacity`` slots numbered 0 .. capacity - 1. The ``SlotTable`` holds, per
slot, the scan the sample came from, the training step it was inserted at and (for the
policies that score samples) its score, plus the stream counters. It holds no frames:
those live in a ``PayloadShard``. The split is what lets the distributed store keep the
whole table on every rank (a few bytes per slot) while each rank holds the frames of only
its own slots: every rank can then run the selection policy on the same table with the same
random numbers and reach the same decisions without asking anyone.

Slots fill in order, and no policy ever frees one, so the held samples always occupy slots
0 .. held - 1 with held = min(seen, capacity).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptycl.rehearsal.samples import ReplaySamples


@dataclass
class Candidates:
    """The bookkeeping of offered samples, in stream order (for MPI: rank 0's, then rank 1's, ...)."""

    scan_index: np.ndarray  # (n,) int64, >= 0
    step: np.ndarray  # (n,) int64
    loss: np.ndarray  # (n,) float64, NaN where the caller passed no losses

    def __len__(self) -> int:
        return len(self.scan_index)

    @staticmethod
    def of(samples: ReplaySamples, losses: torch.Tensor | None) -> Candidates:
        n = len(samples)
        if losses is not None and len(losses) != n:
            raise ValueError(f"{len(losses)} losses for {n} samples")
        scan_index = samples.scan_index.detach().cpu().numpy().astype(np.int64)
        if n and scan_index.min() < 0:
            raise ValueError("offered samples need scan_index >= 0")
        return Candidates(
            scan_index=scan_index,
            step=samples.step.detach().cpu().numpy().astype(np.int64),
            loss=np.full(n, np.nan) if losses is None else losses.detach().cpu().double().numpy(),
        )

    def as_records(self) -> np.ndarray:
        """One structured row per candidate: what ranks exchange to agree on a batch."""
        records = np.empty(len(self), dtype=CANDIDATE_RECORD)
        records["scan_index"], records["step"], records["loss"] = (
            self.scan_index,
            self.step,
            self.loss,
        )
        return records

    @staticmethod
    def from_records(records: np.ndarray) -> Candidates:
        return Candidates(
            records["scan_index"].copy(), records["step"].copy(), records["loss"].copy()
        )


CANDIDATE_RECORD = np.dtype([("scan_index", "<i8"), ("step", "<i8"), ("loss", "<f8")])


@dataclass
class Writes:
    """A batch's decisions: slot ``slots[i]`` now holds candidate ``candidates[i]``.

    Each slot appears once; ``candidates`` ascend (so, under MPI, they group by source rank).
    """

    slots: np.ndarray  # (k,) int64
    candidates: np.ndarray  # (k,) int64, index into the batch's Candidates

    def __len__(self) -> int:
        return len(self.slots)


def table_bytes_per_slot(scored: bool) -> int:
    """scan_index and step (int64 each), plus a float64 score when the policy keeps one."""
    return 24 if scored else 16


@dataclass
class SlotTable:
    capacity: int
    seen: int  # samples offered since the start of the stream
    scan_index: np.ndarray  # (capacity,) int64, -1 for a free slot
    step: np.ndarray  # (capacity,) int64, -1 for a free slot
    score: np.ndarray | None  # (capacity,) float64 (the loss at insertion), for loss-aware eviction
    scan_seen: np.ndarray  # (scans,) int64, samples offered per scan index

    @staticmethod
    def empty(capacity: int, *, scored: bool) -> SlotTable:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        return SlotTable(
            capacity=capacity,
            seen=0,
            scan_index=np.full(capacity, -1, dtype=np.int64),
            step=np.full(capacity, -1, dtype=np.int64),
            score=np.zeros(capacity) if scored else None,
            scan_seen=np.zeros(0, dtype=np.int64),
        )

    @property
    def held(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def bytes_per_slot(self) -> int:
        return table_bytes_per_slot(self.score is not None)

    def apply(self, writes: Writes, batch: Candidates) -> None:
        """Record a decided batch: the written slots' bookkeeping and the stream counters."""
        rows = writes.candidates
        self.scan_index[writes.slots] = batch.scan_index[rows]
        self.step[writes.slots] = batch.step[rows]
        if self.score is not None:
            self.score[writes.slots] = batch.loss[rows]
        self.seen += len(batch)
        per_scan = np.bincount(batch.scan_index, minlength=len(self.scan_seen))
        per_scan[: len(self.scan_seen)] += self.scan_seen
        self.scan_seen = per_scan

    def state_dict(self) -> dict[str, Any]:
        # Tensors, not numpy arrays: checkpoints load with torch.load(weights_only=True).
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "scan_index": torch.from_numpy(self.scan_index.copy()),
            "step": torch.from_numpy(self.step.copy()),
            "score": None if self.score is None else torch.from_numpy(self.score.copy()),
            "scan_seen": torch.from_numpy(self.scan_seen.copy()),
        }

    @staticmethod
    def from_state(state: dict[str, Any]) -> SlotTable:
        score = state["score"]
        return SlotTable(
            capacity=int(state["capacity"]),
            seen=int(state["seen"]),
            scan_index=state["scan_index"].numpy().astype(np.int64),
            step=state["step"].numpy().astype(np.int64),
            score=None if score is None else score.numpy().astype(np.float64),
            scan_seen=state["scan_seen"].numpy().astype(np.int64),
        )

    def fingerprint(self) -> int:
        """A hash of the whole table: replicas on different ranks must agree on it."""
        parts = [self.scan_index, self.step, self.scan_seen, np.array([self.capacity, self.seen])]
        if self.score is not None:
            parts.append(self.score.view(np.int64))
        # hashlib, not hash(): Python salts hash() of bytes differently in every process.
        digest = hashlib.blake2b(b"".join(p.tobytes() for p in parts), digest_size=7).digest()
        return int.from_bytes(digest, "little")
