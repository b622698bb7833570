"""What every rehearsal store offers the training loop.

The local store (``ptycl.rehearsal.local_store``) keeps everything in one process; the
distributed store keeps one shard per MPI rank behind the same interface, so the training
loop never knows which one it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from ptycl.rehearsal.samples import ReplaySamples


class RehearsalStore(ABC):
    @property
    @abstractmethod
    def capacity(self) -> int:
        """Samples the store can hold (all shards together for a distributed store)."""

    @property
    @abstractmethod
    def seen(self) -> int:
        """Samples offered since the start of the stream (all ranks together)."""

    @abstractmethod
    def __len__(self) -> int:
        """Samples held now (all shards together)."""

    @abstractmethod
    def offer(self, samples: ReplaySamples, losses: torch.Tensor | None = None) -> int:
        """Offer a batch from the stream; return how many were written into the store.

        ``losses`` (n,) are the per-sample task losses the step already computed, used by the
        loss-aware policy and ignored by the others.
        """

    @abstractmethod
    def draw(self, n: int) -> ReplaySamples | None:
        """n samples drawn uniformly without replacement from everything held.

        Fewer than n when fewer are held; None when the store is empty.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: contents, counters, RNG state."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the store holds beyond memory (threads, communicators); collective
        for a distributed store. Nothing to do for a store in one process."""
        return None

    def sample_nbytes(self) -> int:
        """Bytes one held sample takes (inputs, labels, outputs and bookkeeping)."""
        raise NotImplementedError
