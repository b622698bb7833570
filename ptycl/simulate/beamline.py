"""One simulated ptychography scan: sample, probe, scan path, far-field frames, ground truth.

Geometry follows the settings: wavelength from the energy, object pixel lambda z / (N dp) from
the detector, probe diameter and step in object pixels. The truth is the object with its phase
referenced over the scanned region (``prep.patches.reference_phase``, which changes no frame:
a global phase factor does not change intensities), and the exit waves are cut from it with
``prep.patches.cut_patches``, so labels cut later from the truth are exactly the patches that
illuminated the detector.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ptycl.config import SimulateSettings
from ptycl.io.records import EV_J, ObjectImage, ScanGeometry, ScanMetadata, SimulatedScan
from ptycl.prep.patches import cut_patches, reference_phase
from ptycl.simulate.forward import detect, exit_waves, expected_counts, far_field_intensity
from ptycl.simulate.objects import make_object
from ptycl.simulate.probe import make_probe
from ptycl.simulate.scan_path import add_jitter, fermat_spiral, raster

OBJECT_MARGIN_PX = 8  # object beyond the outermost patch, so no patch reaches the edge
MAX_OBJECT_DRAWS = 20  # objects drawn for a scan before a too-flat family is an error


def constant_patch_phase_error(phases: np.ndarray, disc: np.ndarray) -> float:
    """How much a scan's frames have to say: the phase MAE over ``disc`` of predicting the
    per-pixel median patch for every one of the (n, S, S) ``phases``, each patch's mean
    difference removed first (a frame is blind to it). A near-flat scan scores near 0 and
    measures nothing; its object is drawn again (``simulate.min_phase_contrast_rad``)."""
    difference = (phases - np.median(phases, axis=0))[:, disc]
    return float(np.abs(difference - difference.mean(axis=1, keepdims=True)).mean())


def _draw_truth(
    family: str,
    object_shape: tuple[int, int],
    pixel_m: tuple[float, float],
    positions_m: np.ndarray,
    disc: np.ndarray,
    min_contrast_rad: float,
    rng: np.random.Generator,
) -> tuple[ObjectImage, np.ndarray]:
    """An object of ``family`` centred on the scan, phase-referenced, and its patches at the
    positions; drawn again while the scan would be near-flat (``constant_patch_phase_error``)."""
    size = disc.shape[0]
    for _ in range(MAX_OBJECT_DRAWS):
        obj = ObjectImage(make_object(family, object_shape, rng), pixel_m, center_m=(0.0, 0.0))
        truth = reference_phase(obj, positions_m, size)
        patches = cut_patches(truth, positions_m, size)
        contrast = constant_patch_phase_error(np.angle(patches), disc)
        if contrast >= min_contrast_rad:
            return truth, patches
    raise ValueError(
        f"{family}: no object of {MAX_OBJECT_DRAWS} draws reached simulate."
        f"min_phase_contrast_rad {min_contrast_rad} (last: {contrast:.3f})"
    )


def _disc(size: int, diameter_px: float) -> np.ndarray:
    offsets = np.arange(size) - size // 2
    return np.hypot(offsets[:, None], offsets[None, :]) <= diameter_px / 2


def simulate_scan(
    settings: SimulateSettings,
    scan_index: int,
    rng: np.random.Generator,
    scan_id: str | None = None,
) -> SimulatedScan:
    """Scan number ``scan_index`` of a run, of domain ``settings.domain(scan_index)``."""
    domain = settings.domain(scan_index)
    family = domain.family
    size = settings.frame_size
    geometry = ScanGeometry(
        energy_j=settings.energy_ev * EV_J,
        distance_m=settings.distance_m,
        detector_pixel_m=(settings.detector_pixel_m, settings.detector_pixel_m),
        frame_shape=(size, size),
    )
    pixel_m = geometry.object_pixel_m

    step_m = settings.step_fraction * domain.probe_diameter_px * pixel_m[0]
    path = fermat_spiral if settings.scan_path == "fermat" else raster
    positions_m = add_jitter(
        path(settings.frames_per_scan, step_m), settings.jitter_fraction * step_m, rng
    )

    # Symmetric about the centre pixel, so every patch (size px around a position) fits with margin.
    reach_px = np.ceil(np.max(np.abs(positions_m) / np.asarray(pixel_m), axis=0)).astype(int)
    object_shape = tuple(int(v) for v in 2 * (reach_px + size // 2 + OBJECT_MARGIN_PX))
    disc = _disc(size, domain.probe_diameter_px)
    truth, patches = _draw_truth(
        family, object_shape, pixel_m, positions_m, disc, settings.min_phase_contrast_rad, rng
    )

    probe = make_probe(domain.probe, size, domain.probe_diameter_px, rng)
    truth = dataclasses.replace(truth, probe=probe)  # the label carries its illumination
    intensity = far_field_intensity(exit_waves(probe, patches))
    frames, mask = detect(
        expected_counts(intensity, settings.photons_per_frame), settings.detector, rng
    )

    scan_id = scan_id or f"scan{scan_index:04d}_{family}"
    metadata = ScanMetadata(
        scan_id=scan_id,
        geometry=geometry,
        sample_family=family,
        mask=mask,
        attrs={
            "simulated": "true",
            "probe": domain.probe,
            "probe_diameter_px": str(domain.probe_diameter_px),
            "scan_path": settings.scan_path,
            "step_m": repr(step_m),
            "photons_per_frame": repr(settings.photons_per_frame),
        },
    )
    return SimulatedScan(
        metadata=metadata, frames=frames, positions_m=positions_m, truth=truth, probe=probe
    )
