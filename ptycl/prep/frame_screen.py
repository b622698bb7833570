"""Frames no detector records, kept from the model: found per frame, counted per scan.

A scan cut short while its writer kept going reads back as frames of zeros; bytes written
over a scan read back as counts in the billions. Both pass the readers' checks (the values
are finite, non-negative numbers) and would be learned from as if measured. A frame is
skipped when:

- every pixel it holds (bad pixels of the mask aside) is zero: no beam, no dark noise, nothing
  a measurement gives inside a scan;
- a pixel holds ``MAX_PIXEL_COUNTS`` or more: orders of magnitude beyond what any counting
  detector records in one frame (an Eiger's 32-bit counter marks a defective pixel with its
  largest value: such pixels belong in the scan's mask).

Each frame is judged alone, so the same frames are skipped however the reads of a growing scan
fall, and a resumed run rebuilds the same segments.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

MAX_PIXEL_COUNTS = 2.0**31
ZERO = "all zero"
BEYOND_RANGE = f"counts of {MAX_PIXEL_COUNTS:.3g} or more"


def unrecordable_frames(
    frames: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """(n,) bool per reason: which of ``frames`` (n, H, W) no detector records."""
    flat = frames.reshape(len(frames), -1)
    if mask is not None and mask.any():
        flat = flat[:, ~mask.reshape(-1)]
    if flat.shape[1] == 0:
        return {ZERO: np.zeros(len(frames), bool), BEYOND_RANGE: np.zeros(len(frames), bool)}
    return {
        ZERO: ~flat.any(axis=1),
        BEYOND_RANGE: flat.max(axis=1).astype(np.float64) >= MAX_PIXEL_COUNTS,
    }


class FrameScreen:
    """Which frames of one scan to keep; ``skipped`` counts the others by reason."""

    def __init__(self, mask: np.ndarray | None = None) -> None:
        self.mask = mask
        self.skipped: Counter[str] = Counter()

    def keep(self, frames: np.ndarray) -> np.ndarray:
        """(n,) bool: the frames of this read a model may learn from."""
        keep = np.ones(len(frames), bool)
        for reason, bad in unrecordable_frames(frames, self.mask).items():
            self.skipped[reason] += int((bad & keep).sum())
            keep &= ~bad
        return keep

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """e.g. "31 frames no detector records skipped (31 all zero)"."""
        parts = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items() if n)
        return f"{self.total_skipped} frames no detector records skipped ({parts})"
