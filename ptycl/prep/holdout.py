"""Which frames of a scan are held out: a region of the sample, not frames interleaved with
training ones.

Neighbouring frames of a scan overlap (a step of a third of the probe is usual), so a frame
held out at random between training frames shows an object the model has already seen: it
measures interpolation. PtychoNN's own evaluation tests on a separate region of the sample
instead. Here the held-out frames are the ``fraction`` of the scan lying farthest along one
direction (a cap of the scanned area, its direction drawn from the seed), and every frame
closer than a guard distance (a probe diameter) to a held-out one is left out of training:
no pixel a held-out frame is scored on was under the probe of a training frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class HoldoutSplit:
    """Rows of a scan's frames: trained on, held out for evaluation, or neither (the guard
    band between the two). Each ascending; together every row once."""

    train_rows: np.ndarray  # (n_train,) int64
    holdout_rows: np.ndarray  # (n_holdout,) int64
    guard_rows: np.ndarray  # (n_guard,) int64


def spatial_holdout(
    positions_m: np.ndarray, fraction: float, guard_m: float, seed: int
) -> HoldoutSplit:
    """Hold out the ``fraction`` of the (N, 2) positions farthest along a direction drawn
    from ``seed``; leave every other frame closer than ``guard_m`` to a held-out one out of
    training. ``fraction`` 0 holds nothing out."""
    positions_m = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
    n = len(positions_m)
    n_holdout = round(n * fraction)
    rows = np.arange(n, dtype=np.int64)
    if n_holdout == 0:
        empty = np.zeros(0, dtype=np.int64)
        return HoldoutSplit(train_rows=rows, holdout_rows=empty, guard_rows=empty)
    angle = np.random.default_rng(seed).uniform(0.0, 2 * np.pi)
    along = positions_m @ np.array([np.sin(angle), np.cos(angle)])  # (y, x) . direction
    # Ties (frames at the same projection) broken by row, so the split is a function of the
    # positions and the seed alone.
    order = np.lexsort((rows, -along))
    held = np.zeros(n, dtype=bool)
    held[order[:n_holdout]] = True
    rest = rows[~held]
    distance, _ = cKDTree(positions_m[held]).query(positions_m[rest])
    guard = np.zeros(n, dtype=bool)
    guard[rest[distance < guard_m]] = True
    return HoldoutSplit(
        train_rows=rows[~held & ~guard], holdout_rows=rows[held], guard_rows=rows[guard]
    )


def support_diameter_m(support: np.ndarray, pixel_m: tuple[float, float]) -> float:
    """The diameter of a (S, S) support disc about the patch centre (S // 2, S // 2), in
    metres: twice its farthest pixel centre's distance plus one pixel."""
    size = support.shape[0]
    offsets = np.arange(size) - size // 2
    radius = np.hypot(offsets[:, None] * pixel_m[0], offsets[None, :] * pixel_m[1])
    return float(2 * radius[support].max(initial=0.0) + max(pixel_m))
