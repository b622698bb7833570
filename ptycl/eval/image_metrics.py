"""How far predicted amplitude and phase are from the truth: MAE, PSNR and SSIM.

Design notes: docs/design.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ptycl.io.records import ObjectImage

AMPLITUDE_RANGE = 1.0
PHASE_RANGE = 2 * np.pi
SSIM_WINDOW = 7  # skimage's default uniform window side; smaller images use their largest odd side


@dataclass(frozen=True)
class ImageErrors:
    """Errors of one image (or the mean over a batch of patches). MAE in the channel's units
    (phase in radians), PSNR in dB (inf for a perfect match), SSIM in [-1, 1]."""

    amplitude_mae: float
    phase_mae: float
    amplitude_psnr: float
    phase_psnr: float
    amplitude_ssim: float
    phase_ssim: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def wrapped_phase_difference(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """angle(exp(i (predicted - true))): the phase error in (-pi, pi]."""
    return np.angle(np.exp(1j * (np.asarray(predicted, np.float64) - np.asarray(true, np.float64))))


def image_errors(
    predicted_amplitude: np.ndarray,
    predicted_phase: np.ndarray,
    true_amplitude: np.ndarray,
    true_phase: np.ndarray,
    mask: np.ndarray | None = None,
    amplitude_range: float = AMPLITUDE_RANGE,
) -> ImageErrors:
    """Errors between two (H, W) images, over ``mask`` (True = compare) or everywhere."""
    shape = np.shape(true_amplitude)
    if len(shape) != 2 or any(
        np.shape(a) != shape for a in (predicted_amplitude, predicted_phase, true_phase)
    ):
        raise ValueError("image_errors needs four (H, W) arrays of one shape")
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask of shape {mask.shape} for images of shape {shape}")
    if not mask.any():
        raise ValueError("the mask selects no pixel to compare")
    return _errors(
        predicted_amplitude,
        predicted_phase,
        true_amplitude,
        true_phase,
        mask,
        _SsimRegion.of(mask),
        amplitude_range,
    )


def object_errors(
    predicted: ObjectImage, truth: ObjectImage, mask: np.ndarray | None = None
) -> ImageErrors:
    """Errors of a stitched object against the truth on the same grid (stitch onto the truth's
    grid with ``stitch_patches(..., canvas=truth)``), over ``mask`` (e.g. ``covered``), after
    removing the phase offset and ramp of the prediction (``remove_phase_plane``)."""
    if not on_same_grid(predicted, truth):
        raise ValueError(
            "predicted and true objects lie on different grids: stitch onto the truth's grid"
        )
    mask = np.ones(truth.values.shape, bool) if mask is None else np.asarray(mask, bool)
    phase = predicted.phase
    if mask.any():
        phase = remove_phase_plane(phase, truth.phase, mask)
    return image_errors(predicted.amplitude, phase, truth.amplitude, truth.phase, mask)


def remove_phase_plane(predicted: np.ndarray, true: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``predicted`` (H, W) phase less the plane a + b y + c x that best fits (least squares)
    its wrapped difference to ``true`` over ``mask``: the offset first, as a circular mean (so
    an offset near pi is not split in two), then the ramp of what is left."""
    difference = wrapped_phase_difference(predicted, true)[mask]
    offset = np.angle(np.mean(np.exp(1j * difference)))
    rows, cols = np.nonzero(mask)
    basis = np.stack([np.ones(rows.size), rows, cols], axis=1).astype(np.float64)
    residual = np.angle(np.exp(1j * (difference - offset)))
    (a, b, c), *_ = np.linalg.lstsq(basis, residual, rcond=None)
    y, x = np.indices(predicted.shape)
    return np.asarray(predicted, np.float64) - (offset + a + b * y + c * x)


def on_same_grid(a: ObjectImage, b: ObjectImage) -> bool:
    """Whether two images' pixels coincide: same shape and pixel size, centres within a
    thousandth of a pixel."""
    return (
        a.values.shape == b.values.shape
        and np.allclose(a.pixel_m, b.pixel_m, rtol=1e-6)
        and np.allclose(a.center_m, b.center_m, rtol=0, atol=1e-3 * min(b.pixel_m))
    )


def batch_errors(
    predicted_amplitude: np.ndarray,
    predicted_phase: np.ndarray,
    true_amplitude: np.ndarray,
    true_phase: np.ndarray,
    amplitude_range: float = AMPLITUDE_RANGE,
) -> ImageErrors:
    """Mean over a batch of (n, h, w) patches of each patch's errors.

    PSNR is averaged in dB, the usual per-image convention; a batch holding a perfect patch
    has an infinite mean PSNR.
    """
    shape = np.shape(true_amplitude)
    if (
        len(shape) != 3
        or shape[0] == 0
        or any(np.shape(a) != shape for a in (predicted_amplitude, predicted_phase, true_phase))
    ):
        raise ValueError("batch_errors needs four non-empty (n, h, w) arrays of one shape")
    mask = np.ones(shape[1:], bool)
    region = _SsimRegion.of(mask)
    per_patch = [
        _errors(*patch, mask, region, amplitude_range)
        for patch in zip(
            predicted_amplitude, predicted_phase, true_amplitude, true_phase, strict=True
        )
    ]
    return ImageErrors(
        **{
            name: float(np.mean([getattr(e, name) for e in per_patch]))
            for name in per_patch[0].to_dict()
        }
    )


@dataclass(frozen=True)
class _SsimRegion:
    """The SSIM window side for an image shape, and the pixels whose SSIM counts."""

    window: int
    pixels: np.ndarray  # (H, W) bool

    @classmethod
    def of(cls, mask: np.ndarray) -> _SsimRegion:
        window = min(SSIM_WINDOW, *(side - 1 + side % 2 for side in mask.shape))
        if window < 3:
            raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {mask.shape}")
        # pixels whose whole window lies inside the mask and the image (with a full mask this
        # is skimage's own mean SSIM, which crops the image border), unless nothing is left
        inner = ndimage.binary_erosion(mask, np.ones((window, window), bool), border_value=0)
        return cls(window, inner if inner.any() else mask)


def _errors(
    predicted_amplitude: np.ndarray,
    predicted_phase: np.ndarray,
    true_amplitude: np.ndarray,
    true_phase: np.ndarray,
    mask: np.ndarray,
    region: _SsimRegion,
    amplitude_range: float,
) -> ImageErrors:
    true_amplitude = np.asarray(true_amplitude, np.float64)
    predicted_amplitude = np.asarray(predicted_amplitude, np.float64)
    true_phase = np.asarray(true_phase, np.float64)
    # the prediction's phase unwrapped onto the truth: differences become the wrapped ones
    aligned_phase = true_phase + wrapped_phase_difference(predicted_phase, true_phase)
    return ImageErrors(
        amplitude_mae=float(np.abs(predicted_amplitude - true_amplitude)[mask].mean()),
        phase_mae=float(np.abs(aligned_phase - true_phase)[mask].mean()),
        amplitude_psnr=_psnr(true_amplitude[mask], predicted_amplitude[mask], amplitude_range),
        phase_psnr=_psnr(true_phase[mask], aligned_phase[mask], PHASE_RANGE),
        amplitude_ssim=_ssim(true_amplitude, predicted_amplitude, region, amplitude_range),
        # SSIM is not shift-invariant: its luminance term misbehaves for means near 0, so
        # phase is compared as an image in [0, 2 pi], like an intensity with that data range
        phase_ssim=_ssim(true_phase + np.pi, aligned_phase + np.pi, region, PHASE_RANGE),
    )


def _psnr(true: np.ndarray, predicted: np.ndarray, data_range: float) -> float:
    # skimage divides by the MSE: a perfect match is +inf, not a warning
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(true, predicted, data_range=data_range))


def _ssim(true: np.ndarray, predicted: np.ndarray, region: _SsimRegion, data_range: float) -> float:
    _, ssim_map = structural_similarity(
        true, predicted, win_size=region.window, data_range=data_range, full=True
    )
    return float(ssim_map[region.pixels].mean())
