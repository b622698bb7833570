"""Do the predicted patches agree with each other where they overlap? A check of the position
convention from the data alone.

At the right positions, overlapping patches show the same part of the object and agree; read
with the wrong sign, every patch lands at its mirror position and overlaps patches of other
parts of the object. The disagreement is the mean squared difference between each patch's
amplitude and the stitched image's under it, over the pixels each patch was stitched with,
relative to the patches' own variance: 0 for patches that agree everywhere. Amplitude only:
the model's phase carries a per-patch offset no diffraction frame can fix.

The check says something only of a model that predicts the object well; ``ptycl reconstruct``
reports it when the negated positions are clearly more self-consistent (``CLEARLY``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptycl.prep.patches import cut_patches
from ptycl.recon.stitch import patch_window, stitch_patches

# The negated positions must cut the disagreement to less than this fraction of the one as
# read before ptycl says the other convention fits better.
CLEARLY = 0.5


@dataclass(frozen=True)
class ConsistencyCheck:
    as_read: float  # disagreement of the patches at the positions as read
    negated: float  # the same at the positions negated

    @property
    def other_fits_better(self) -> bool:
        return self.negated < CLEARLY * self.as_read


def disagreement(
    amplitude: np.ndarray,
    positions_m: np.ndarray,
    pixel_m: tuple[float, float],
    window: np.ndarray | str = "tukey",
) -> float:
    """How far (n, S, S) amplitude patches stitched at ``positions_m`` disagree with the
    stitched image under them, relative to their variance."""
    phase = np.zeros_like(amplitude)
    stitched = stitch_patches(amplitude, phase, positions_m, pixel_m, window=window)
    under = np.abs(cut_patches(stitched.image, positions_m, amplitude.shape[-1]))
    weights = np.broadcast_to(patch_window(amplitude.shape[1:], window), amplitude.shape)
    spread = float(np.average((amplitude - amplitude.mean()) ** 2, weights=weights))
    if spread == 0:
        return 0.0
    return float(np.average((amplitude - under) ** 2, weights=weights) / spread)


def check_positions(
    amplitude: np.ndarray,
    positions_m: np.ndarray,
    pixel_m: tuple[float, float],
    window: np.ndarray | str = "tukey",
) -> ConsistencyCheck:
    return ConsistencyCheck(
        as_read=disagreement(amplitude, positions_m, pixel_m, window),
        negated=disagreement(amplitude, -positions_m, pixel_m, window),
    )
