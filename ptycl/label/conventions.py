"""How an iterative reconstruction is referenced before it becomes a label.

Ptychography leaves an object O and probe P determined only up to transformations that change
no diffraction frame; a network trained on labels that differ by them across scans learns an
inconsistent target. ptycl fixes each one the way its simulator's truth is fixed:

- global phase (O e^{ic}, P e^{-ic}): the amplitude-weighted circular mean phase over the
  scanned area is set to zero, with ``prep.patches.reference_phase``, as the truth is;
- linear phase ramp (O e^{i k.r}, a probe shifted in the far field by -k): the amplitude-weighted
  mean phase gradient over the illuminated area is removed; the truth carries no ramp beyond
  what its structure averages to;
- scale (c O, P / c): when the photons incident per frame are known, the probe is given that
  power so the object's amplitude is its transmission; otherwise the object is scaled so that
  the AMPLITUDE_QUANTILE of its amplitude over the illuminated area is 1 (the clearest parts
  of a thin sample pass nearly all the beam).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ptycl.io.records import ObjectImage
from ptycl.prep.patches import illuminated_support, reference_phase

AMPLITUDE_QUANTILE = 0.95


@dataclass(frozen=True)
class Referenced:
    image: ObjectImage  # object and probe, referenced
    amplitude_reference: str  # "incident photons" or "amplitude quantile 0.95 = 1"
    removed_ramp_rad_per_px: tuple[float, float]  # (y, x)


def illuminated_area(image: ObjectImage, positions_m: np.ndarray) -> np.ndarray:
    """Bool mask of the object's pixels inside the illuminated disc (90% of the probe's
    intensity, ``illuminated_support``) about some probe position (the nearest pixel)."""
    if image.probe is None:
        raise ValueError("the illuminated area needs the image's probe")
    height, width = image.probe.shape
    size = min(height, width)
    disc = illuminated_support(image.probe, image.pixel_m, image.pixel_m, size)
    area = np.zeros(image.values.shape, dtype=bool)
    first = np.rint(image.pixel_coordinates(positions_m)).astype(np.intp) - size // 2
    first = np.clip(first, 0, np.array(image.values.shape) - size)
    for top, left in first:
        area[top : top + size, left : left + size] |= disc
    return area


def phase_ramp(values: np.ndarray, area: np.ndarray) -> tuple[float, float]:
    """(y, x) radians per pixel: the amplitude-weighted mean of the phase differences between
    neighbouring pixels of ``area`` (phase differences, so wrapping does not matter)."""
    down = area[1:, :] & area[:-1, :]
    right = area[:, 1:] & area[:, :-1]
    gy = np.angle(np.sum((values[1:, :] * np.conj(values[:-1, :]))[down], dtype=np.complex128))
    gx = np.angle(np.sum((values[:, 1:] * np.conj(values[:, :-1]))[right], dtype=np.complex128))
    return float(gy), float(gx)


def reference_label(
    image: ObjectImage,
    positions_m: np.ndarray,
    incident_photons_per_frame: float | None,
) -> Referenced:
    """``image`` (object with its probe, as the solver returned them; the probe's power in
    detector counts per frame, ``ptychi``'s unnormalised FFT) referenced as the module docstring says."""
    if image.probe is None:
        raise ValueError("referencing a reconstruction needs its probe")
    area = illuminated_area(image, positions_m)
    gy, gx = phase_ramp(image.values, area)
    rows, cols = np.indices(image.values.shape)
    rows, cols = rows - image.values.shape[0] // 2, cols - image.values.shape[1] // 2
    values = image.values * np.exp(-1j * (gy * rows + gx * cols))
    # The ramp moved into the probe, so that probe x object, and every frame, stays the same.
    p_rows, p_cols = np.indices(image.probe.shape)
    p_rows, p_cols = p_rows - image.probe.shape[0] // 2, p_cols - image.probe.shape[1] // 2
    probe = image.probe * np.exp(1j * (gy * p_rows + gx * p_cols))

    probe_counts = float(np.sum(np.abs(probe) ** 2)) * probe.size  # unnormalised FFT
    if incident_photons_per_frame is not None:
        scale = np.sqrt(probe_counts / incident_photons_per_frame)
        how = "incident photons"
    else:
        scale = 1.0 / max(float(np.quantile(np.abs(values[area]), AMPLITUDE_QUANTILE)), 1e-12)
        how = f"amplitude quantile {AMPLITUDE_QUANTILE:g} = 1"
    scaled = replace(
        image,
        values=(values * scale).astype(np.complex64),
        # Stored at unit power, as the simulator's probe: its shape is what a label needs.
        probe=(probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64),
    )
    referenced = reference_phase(scaled, positions_m, min(image.probe.shape))
    return Referenced(
        image=replace(referenced, probe=scaled.probe),
        amplitude_reference=how,
        removed_ramp_rad_per_px=(gy, gx),
    )
