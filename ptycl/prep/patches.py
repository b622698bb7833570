"""Object patches under the probe: the exit-wave input of the simulator and the model's labels.

Design notes: docs/design.md.
"""

from __future__ import annotations

import numpy as np

from ptycl.io.records import ObjectImage, ScanGeometry
from ptycl.prep.frames import Resize, bin_factor

KEYS_A = -0.5
# Positions come in metres; converting to pixels leaves float noise (3 * p / p != 3 exactly).
# Positions are never known to a millionth of a pixel, so snapping within that loses nothing.
SNAP_TOLERANCE_PX = 1e-6


def cut_patches(obj: ObjectImage, positions_m: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) complex64 object patches centred at each (y, x) position in metres.

    Raises ValueError naming the first position whose patch would leave the object.
    """
    first_px = _patch_origins(obj, positions_m, size)
    base = np.floor(first_px).astype(np.intp)
    fraction = (first_px - base).astype(np.float32)
    # Taps reach one pixel before and two after each output pixel; edge padding keeps the taps
    # of a patch that touches the border inside the array.
    padded = np.pad(obj.values.astype(np.complex64, copy=False), 2, mode="edge")
    taps = np.arange(-1, size + 2) + 2
    rows = base[:, 0, None] + taps  # (n, size + 3)
    cols = base[:, 1, None] + taps
    block = padded[rows[:, :, None], cols[:, None, :]]  # (n, size + 3, size + 3)
    weights_y, weights_x = _keys_weights(fraction[:, 0]), _keys_weights(fraction[:, 1])
    along_y = sum(weights_y[:, k, None, None] * block[:, k : k + size, :] for k in range(4))
    return sum(weights_x[:, k, None, None] * along_y[:, :, k : k + size] for k in range(4))


def label_patches(
    obj: ObjectImage, positions_m: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(amplitude, phase) label patches, each (n, size, size) float32, phase in (-pi, pi].

    Call ``reference_phase`` once per scan (with all its positions) before cutting labels in
    batches, so every batch shares the scan's phase reference.
    """
    patches = cut_patches(obj, positions_m, size)
    return np.abs(patches).astype(np.float32), np.angle(patches).astype(np.float32)


def reference_phase(obj: ObjectImage, positions_m: np.ndarray, probe_size: int) -> ObjectImage:
    """The object with its global phase offset over the scanned region removed.

    Ptychography recovers the object only up to a constant phase factor, so labels from two
    reconstructions (or a reconstruction and the truth) disagree by an arbitrary offset. The
    offset is the amplitude-weighted circular mean of the phase, angle(sum of A exp(i phi)),
    over the pixels covered by a ``probe_size`` square around some position; the result has
    that mean at zero. Circular, so an offset near +-pi does not average to zero by wrapping.
    """
    scanned = np.zeros(obj.values.shape, dtype=bool)
    for top, left in np.rint(_patch_origins(obj, positions_m, probe_size)).astype(np.intp):
        scanned[top : top + probe_size, left : left + probe_size] = True
    offset = np.angle(np.sum(obj.values[scanned], dtype=np.complex128))
    values = (obj.values * np.exp(-1j * offset)).astype(np.complex64)
    return ObjectImage(values=values, pixel_m=obj.pixel_m, center_m=obj.center_m)


def _patch_origins(obj: ObjectImage, positions_m: np.ndarray, size: int) -> np.ndarray:
    """Fractional (row, column) of each patch's pixel (0, 0); ValueError if a patch leaves obj."""
    centre_px = obj.pixel_coordinates(np.asarray(positions_m, dtype=np.float64).reshape(-1, 2))
    nearest = np.rint(centre_px)
    centre_px = np.where(np.abs(centre_px - nearest) < SNAP_TOLERANCE_PX, nearest, centre_px)
    first_px = centre_px - size // 2
    last_allowed = np.array(obj.values.shape) - size
    outside = np.any((first_px < 0) | (first_px > last_allowed), axis=1)
    if np.any(outside):
        i = int(np.argmax(outside))
        raise ValueError(
            f"a {size}x{size} patch at position {i} (y, x) = {tuple(positions_m[i])} m would span object "
            f"pixels from {tuple(np.round(first_px[i], 2))}, outside the {obj.values.shape} object"
        )
    return first_px


def _keys_weights(fraction: np.ndarray) -> np.ndarray:
    """(n, 4) weights of the taps at -1, 0, 1, 2 pixels for fractional offsets in [0, 1)."""
    distance = np.abs(fraction[:, None] - np.arange(-1, 3, dtype=fraction.dtype))
    near = ((KEYS_A + 2) * distance - (KEYS_A + 3)) * distance**2 + 1
    far = ((KEYS_A * distance - 5 * KEYS_A) * distance + 8 * KEYS_A) * distance - 4 * KEYS_A
    return np.where(distance <= 1, near, np.where(distance < 2, far, 0)).astype(fraction.dtype)


def label_pixel_m(geometry: ScanGeometry, input_size: int, resize: Resize) -> tuple[float, float]:
    """The object pixel of the model's output patch after preparing frames to ``input_size``.

    The input spans ``input_size * factor`` detector pixels (``bin_factor``: 1 when cropping),
    so the real-space pixel is lambda z / (input_size * factor * detector pixel). Cropping keeps
    the field of view at a coarser pixel; binning by frame/input_size keeps the object pixel,
    and a frame that is not a whole multiple of the input is first cropped to one.
    """
    factor = bin_factor(geometry.frame_shape, input_size, resize)
    lz = geometry.wavelength_m * geometry.distance_m
    return (
        lz / (input_size * factor * geometry.detector_pixel_m[0]),
        lz / (input_size * factor * geometry.detector_pixel_m[1]),
    )


def resample_object(obj: ObjectImage, pixel_m: tuple[float, float]) -> ObjectImage:
    """The object on a grid of ``pixel_m`` with the same centre (anti-aliased when coarser).

    A Gaussian prefilter of about half the scale factor keeps a coarser grid from aliasing;
    the complex values are interpolated linearly (real and imaginary parts, scipy.ndimage).
    """
    if np.allclose(pixel_m, obj.pixel_m, rtol=1e-9, atol=0.0):
        return obj
    from scipy import ndimage

    factor = np.asarray(pixel_m) / np.asarray(obj.pixel_m)  # > 1: coarser
    old_shape = np.asarray(obj.values.shape)
    new_shape = np.maximum(1, np.floor(old_shape / factor)).astype(int)
    rows = old_shape[0] // 2 + (np.arange(new_shape[0]) - new_shape[0] // 2) * factor[0]
    cols = old_shape[1] // 2 + (np.arange(new_shape[1]) - new_shape[1] // 2) * factor[1]
    grid = np.meshgrid(rows, cols, indexing="ij")
    sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
    values = np.empty(tuple(new_shape), dtype=np.complex64)
    for part, dest in ((obj.values.real, "real"), (obj.values.imag, "imag")):
        smoothed = ndimage.gaussian_filter(part, sigma) if sigma.any() else part
        sampled = ndimage.map_coordinates(smoothed, grid, order=1, mode="nearest")
        if dest == "real":
            values.real = sampled
        else:
            values.imag = sampled
    return ObjectImage(values, (float(pixel_m[0]), float(pixel_m[1])), obj.center_m)


def illuminated_support(
    probe: np.ndarray,
    probe_pixel_m: tuple[float, float],
    label_pixel_m: tuple[float, float],
    size: int,
    energy_fraction: float = 0.9,
) -> np.ndarray:
    """(size, size) bool: the label pixels under the probe, a disc about the patch centre whose
    radius encircles ``energy_fraction`` of the probe's intensity.

    A diffraction frame records probe × object; where the probe is dark the frame says nothing
    about the object, so a model cannot learn those pixels and scoring them only measures how
    well it guesses the mean. The model is trained and scored on this disc instead (PtychoNN's
    "object patch under the probe"). The encircled-energy radius is the usual measure of a
    beam's size; unlike a fraction of the peak it counts the rings of a zone-plate focus, which
    light the object too.
    """
    intensity = np.abs(probe).astype(np.float64) ** 2
    rows, cols = np.indices(probe.shape)
    radius_m = np.hypot(
        (rows - probe.shape[0] // 2) * probe_pixel_m[0],
        (cols - probe.shape[1] // 2) * probe_pixel_m[1],
    ).ravel()
    order = np.argsort(radius_m)
    encircled = np.cumsum(intensity.ravel()[order]) / intensity.sum()
    support_radius_m = radius_m[order][
        min(np.searchsorted(encircled, energy_fraction), order.size - 1)
    ]
    offsets = np.arange(size) - size // 2
    label_radius_m = np.hypot(
        offsets[:, None] * label_pixel_m[0], offsets[None, :] * label_pixel_m[1]
    )
    return label_radius_m <= support_radius_m
