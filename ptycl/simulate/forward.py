"""Far-field (Fraunhofer) forward model and detector: exit waves to integer frames.

Thin-sample approximation: the exit wave is probe x object patch. The detector sits in the far
field, so its field is the Fourier transform of the exit wave; with the object pixel
lambda z / (N dp) one FFT bin is one detector pixel. The transform is unitary (``norm="ortho"``)
so the diffracted power equals the exit wave's power, and shifted so that the zero order (the
undiffracted beam) lands on pixel (H // 2, W // 2), where beamlines centre the beam.

Photon budget: ``photons_per_frame`` counts photons *incident on the sample* per exposure. What
the sample absorbs never reaches the detector, so the expected total counts of a frame are
photons x sum |P O|^2 / sum |P|^2 (the transmitted fraction), not the budget itself.
"""

from __future__ import annotations

import numpy as np

from ptycl.config import DetectorSettings


def exit_waves(probe: np.ndarray, object_patches: np.ndarray) -> np.ndarray:
    """(n, H, W) complex64 exit waves of a (H, W) probe through (n, H, W) object patches."""
    if object_patches.shape[-2:] != probe.shape:
        raise ValueError(
            f"object patches {object_patches.shape} do not match the probe {probe.shape}"
        )
    return (probe * object_patches).astype(np.complex64, copy=False)


def far_field_intensity(exit_waves: np.ndarray) -> np.ndarray:
    """(n, H, W) float32 |FFT|^2, unitary, zero order at (H // 2, W // 2)."""
    field = np.fft.fftshift(np.fft.fft2(exit_waves, norm="ortho"), axes=(-2, -1))
    return (field.real**2 + field.imag**2).astype(np.float32, copy=False)


def expected_counts(
    intensity: np.ndarray, photons_per_frame: float, probe_power: float = 1.0
) -> np.ndarray:
    """Mean photon counts per pixel (float64): ``photons_per_frame`` incident on the sample.

    ``probe_power`` is sum |P|^2 of the probe that made ``intensity`` (1 for ``make_probe``).
    """
    return intensity.astype(np.float64) * (photons_per_frame / probe_power)


def detect(
    expected: np.ndarray, detector: DetectorSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Photon-counting detector: (frames (n, H, W) of ``detector.dtype``, bad-pixel mask (H, W)).

    In order: Poisson shot noise; counts at or below the threshold read 0 (a photon-counting
    detector's energy threshold discards noise); counts above the full well (or the dtype's
    range) clip; then the module gap reads 0 and bad pixels are stuck, half of them dead (0)
    and half hot (full scale), the same pixels in every frame. The mask is True where a pixel
    is bad or in the gap.
    """
    dtype = np.dtype(detector.dtype)
    full_scale = min(detector.saturation_counts, np.iinfo(dtype).max)
    counts = rng.poisson(expected)
    counts[counts <= detector.threshold_counts] = 0
    np.minimum(counts, full_scale, out=counts)

    height, width = expected.shape[-2:]
    mask = np.zeros((height, width), dtype=bool)
    gap = slice(
        width // 2 - detector.gap_columns // 2,
        width // 2 - detector.gap_columns // 2 + detector.gap_columns,
    )
    mask[:, gap] = True
    counts[..., mask] = 0

    working = np.flatnonzero(~mask)
    n_bad = round(detector.bad_pixel_fraction * working.size)
    bad = rng.choice(working, size=n_bad, replace=False)
    hot = rng.random(n_bad) < 0.5
    bad_rows, bad_cols = np.unravel_index(bad, mask.shape)
    counts[..., bad_rows, bad_cols] = np.where(hot, full_scale, 0)
    mask[bad_rows, bad_cols] = True
    return counts.astype(dtype), mask
