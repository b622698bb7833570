"""A rehearsal store in one process: preallocated tensors, reservoir sampling (Algorithm R).

Every sample offered so far has the same probability, capacity / seen, of being held, from
the first sample on: the first ``capacity`` samples fill the store, and the t-th sample after
that replaces a uniformly chosen held one with probability capacity / t. The decisions come
from the selection kernels (``ptycl.rehearsal.select``), given uniforms drawn here from one
numpy Generator whose state is part of the checkpoint, so a resumed run decides exactly as an
uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptycl.rehearsal import select
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.store import RehearsalStore

_BOOKKEEPING_BYTES = 16  # scan_index + step, int64 each


def samples_for_bytes(capacity_bytes: int, frame_shape: tuple[int, int], half_precision: bool) -> int:
    """How many samples fit in a byte budget: 5 planes (input, 2 labels, 2 outputs) + bookkeeping."""
    element = 2 if half_precision else 4
    per_sample = 5 * frame_shape[0] * frame_shape[1] * element + _BOOKKEEPING_BYTES
    return max(1, capacity_bytes // per_sample)


class LocalReservoirStore(RehearsalStore):
    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int],
        *,
        half_precision: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self._capacity = capacity
        self.frame_shape = frame_shape
        self.storage_dtype = torch.float16 if half_precision else torch.float32
        h, w = frame_shape
        pin = torch.device(device).type == "cpu" and torch.cuda.is_available()

        def planes(channels: int) -> torch.Tensor:
            return torch.zeros((capacity, channels, h, w), dtype=self.storage_dtype, device=device, pin_memory=pin)

        self._held = ReplaySamples(
            inputs=planes(1),
            labels=planes(2),
            outputs=planes(2),
            scan_index=torch.full((capacity,), -1, dtype=torch.int64, device=device),
            step=torch.full((capacity,), -1, dtype=torch.int64, device=device),
        )
        self._seen = 0
        self._rng = np.random.default_rng(seed)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def seen(self) -> int:
        return self._seen

    def __len__(self) -> int:
        return min(self._seen, self._capacity)

    def sample_nbytes(self) -> int:
        h, w = self.frame_shape
        return 5 * h * w * self.storage_dtype.itemsize + _BOOKKEEPING_BYTES

    def offer(self, samples: ReplaySamples, losses: torch.Tensor | None = None) -> int:
        n = len(samples)
        slots = select.reservoir_slots(self._seen, self._capacity, self._rng.random(n))
        self._seen += n
        # Later candidates of one batch overwrite earlier ones in the same slot (Algorithm R's
        # sequential semantics); write each slot once, from its last candidate.
        slot_index, candidate_index = select.last_writer_per_slot(slots)
        if len(slot_index) == 0:
            return 0
        rows = torch.from_numpy(candidate_index).to(samples.inputs.device)
        where = torch.from_numpy(slot_index).to(self._held.inputs.device)
        new = samples.take(rows).to(self._held.inputs.device, dtype=self.storage_dtype)
        for held, incoming in zip(_fields(self._held), _fields(new), strict=True):
            held[where] = incoming
        return len(slot_index)

    def draw(self, n: int) -> ReplaySamples | None:
        held = len(self)
        if held == 0:
            return None
        rows = select.draw_without_replacement(held, n, self._rng.random(min(n, held)))
        return self._held.take(torch.from_numpy(rows).to(self._held.inputs.device))

    def state_dict(self) -> dict[str, Any]:
        held = len(self)
        return {
            "capacity": self._capacity,
            "seen": self._seen,
            "rng": self._rng.bit_generator.state,
            # Only the filled rows: a checkpoint of a young store stays small.
            "held": {name: t[:held].clone() for name, t in zip(_FIELD_NAMES, _fields(self._held), strict=True)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self._capacity:
            raise ValueError(f"store capacity {state['capacity']} in the checkpoint, {self._capacity} configured")
        self._seen = int(state["seen"])
        self._rng.bit_generator.state = state["rng"]
        for name, t in zip(_FIELD_NAMES, _fields(self._held), strict=True):
            saved = state["held"][name]
            t[: len(saved)] = saved.to(t.device, t.dtype)


_FIELD_NAMES = ("inputs", "labels", "outputs", "scan_index", "step")


def _fields(samples: ReplaySamples) -> tuple[torch.Tensor, ...]:
    return tuple(getattr(samples, name) for name in _FIELD_NAMES)
