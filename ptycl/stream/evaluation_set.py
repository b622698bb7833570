"""Which earlier scans the watcher evaluates after each new one: a reservoir over the run.

Design notes: docs/design.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Mixed into run.seed so the set's draws are not the same numbers as any other seeded stream.
_SEED_TAG = 0x65_76_61_6C  # "eval"


class EvaluationReservoir:
    """A uniform sample of at most ``capacity`` of the items offered so far (Algorithm R).

    Items are the trained scans' column indices in the error matrices, offered once each in the
    order they were trained. Guarantee: after ``seen`` offers, every item offered is held with
    probability ``min(1, capacity / seen)``, independently of when it was offered; the held
    items are a uniform random subset. ``offer`` draws one integer per offer once the reservoir
    is full and none before, so the future depends only on the seed and the number of offers.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.seen = 0  # items offered so far
        self._slots: list[int] = []  # Algorithm R's slots; the order matters to replacements
        # SeedSequence wants non-negative entropy: fold a negative run.seed into 64 bits.
        self._rng = np.random.default_rng([seed % 2**64, _SEED_TAG])

    @property
    def members(self) -> list[int]:
        """The items held, ascending."""
        return sorted(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, item: int) -> bool:
        return item in self._slots

    def offer(self, item: int) -> tuple[bool, int | None]:
        """Offer the next item: (whether it is now held, the item it evicted or None)."""
        self.seen += 1
        if len(self._slots) < self.capacity:
            self._slots.append(item)
            return True, None
        slot = int(self._rng.integers(0, self.seen))  # uniform over the seen items' positions
        if slot >= self.capacity:
            return False, None
        evicted, self._slots[slot] = self._slots[slot], item
        return True, evicted

    # -- checkpoint state: plain values, for torch.load(weights_only=True) and JSON ---------

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "slots": list(self._slots),
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EvaluationReservoir:
        reservoir = cls(int(state["capacity"]), seed=0)
        reservoir.seen = int(state["seen"])
        reservoir._slots = [int(item) for item in state["slots"]]
        if len(reservoir._slots) > min(reservoir.capacity, reservoir.seen):
            raise ValueError(
                f"evaluation set holds {len(reservoir._slots)} items after {reservoir.seen} "
                f"offers with capacity {reservoir.capacity}"
            )
        reservoir._rng.bit_generator.state = state["rng"]
        return reservoir
