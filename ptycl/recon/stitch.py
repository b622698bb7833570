"""Stitch predicted object patches into one object image by probe position.

Design notes: docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.signal import windows

from ptycl.io.records import ObjectImage

WindowName = Literal["uniform", "tukey", "hann"]

# Positions within this many pixels of an integer are snapped to it, so that positions meant to
# lie on the grid (but carrying float round-off from metres) stitch exactly, not blurred.
SNAP_PX = 1e-6
# Patches are splatted this many at a time: small enough for the temporaries to stay in cache
# (about 2 MB for 64x64 patches), large enough for numpy's per-call overhead not to matter.
CHUNK_PATCHES = 32
# What is summed on the canvas: window weight, and window-weighted amplitude, cos and sin.
SUMS = ("weight", "amplitude", "cos", "sin")


@dataclass(frozen=True)
class CanvasGrid:
    """Where the stitched image lives: its shape, pixel size and centre (as in ObjectImage)."""

    shape: tuple[int, int]  # (H, W)
    pixel_m: tuple[float, float]  # (y, x)
    center_m: tuple[float, float]  # (y, x) position of pixel (H // 2, W // 2)

    @classmethod
    def of_image(cls, image: ObjectImage) -> CanvasGrid:
        """The grid of an existing image, e.g. the ground truth, to compare pixel by pixel."""
        return cls(image.values.shape, tuple(image.pixel_m), tuple(image.center_m))

    @classmethod
    def covering(
        cls,
        positions_m: np.ndarray,
        patch_shape: tuple[int, int],
        pixel_m: tuple[float, float],
        margin_px: int = 4,
    ) -> CanvasGrid:
        """The smallest odd-sided grid holding every patch plus ``margin_px`` on each side.

        The centre is snapped to a multiple of the pixel size, so the grid's pixel centres sit
        at integer multiples of ``pixel_m`` in the scan frame (like a truth image centred on
        the origin): positions on that lattice land exactly on pixels.
        """
        pixel = np.asarray(pixel_m, dtype=np.float64)
        positions_px = np.asarray(positions_m, dtype=np.float64) / pixel
        low, high = positions_px.min(axis=0), positions_px.max(axis=0)
        centre_px = np.round((low + high) / 2)
        patch = np.asarray(patch_shape)
        # room for the farther extreme position, the larger half of a patch, the bilinear
        # spill of one pixel, and the margin
        half = (
            np.ceil(np.maximum(centre_px - low, high - centre_px)).astype(int)
            + np.maximum(patch // 2, patch - patch // 2)
            + 1
            + margin_px
        )
        shape = (int(2 * half[0] + 1), int(2 * half[1] + 1))
        center = centre_px * pixel
        return cls(shape, (float(pixel[0]), float(pixel[1])), (float(center[0]), float(center[1])))

    def pixel_coordinates(self, positions_m: np.ndarray) -> np.ndarray:
        """Fractional (row, column) of (N, 2) (y, x) positions: ObjectImage's own mapping."""
        # np.zeros is allocated lazily, so borrowing ObjectImage's mapping costs nothing
        blank = ObjectImage(np.zeros(self.shape, np.complex64), self.pixel_m, self.center_m)
        return blank.pixel_coordinates(np.asarray(positions_m, dtype=np.float64))


@dataclass(frozen=True)
class StitchedObject:
    """A stitched object image with how much evidence each pixel rests on.

    ``image.values`` is 0 where ``covered`` is False (never NaN), so the image can be saved
    and displayed as is; metrics and plots restrict themselves to ``covered``.
    """

    image: ObjectImage  # complex64 amplitude * exp(i phase)
    weight: np.ndarray  # (H, W) float64, sum of the window weights landing on each pixel
    covered: np.ndarray  # (H, W) bool, weight >= the stitching threshold


def patch_window(
    patch_shape: tuple[int, int], window: WindowName | np.ndarray = "tukey"
) -> np.ndarray:
    """The (h, w) weight of each patch pixel in the average, scaled to a maximum of 1.

    "tukey" (flat top over the inner half, cosine edges) and "hann" are separable windows from
    ``scipy.signal.windows``, computed two samples longer and trimmed, so that even the edge
    pixels keep a small positive weight. An array (e.g. the probe intensity |probe|^2) is used
    as given.
    """
    h, w = patch_shape
    if isinstance(window, np.ndarray):
        if window.shape != (h, w):
            raise ValueError(f"window of shape {window.shape} for patches of shape {(h, w)}")
        weights = np.abs(window).astype(np.float64)
    elif window == "uniform":
        weights = np.ones((h, w))
    elif window in ("tukey", "hann"):

        def one_axis(n: int) -> np.ndarray:
            full = windows.tukey(n + 2, alpha=0.5) if window == "tukey" else windows.hann(n + 2)
            return full[1:-1]

        weights = np.outer(one_axis(h), one_axis(w))
    else:
        raise ValueError(f"unknown window {window!r}: use 'uniform', 'tukey', 'hann' or an array")
    peak = weights.max()
    if not peak > 0:
        raise ValueError("window is zero everywhere")
    return weights / peak


def stitch_patches(
    amplitude: np.ndarray,
    phase: np.ndarray,
    positions_m: np.ndarray,
    pixel_m: tuple[float, float],
    canvas: CanvasGrid | ObjectImage | None = None,
    window: WindowName | np.ndarray = "tukey",
    min_weight: float = 0.05,
    margin_px: int = 4,
) -> StitchedObject:
    """Stitch (n, h, w) amplitude and phase patches centred at ``positions_m`` into one image.

    ``canvas`` is the output grid: by default the bounding box of all patches plus
    ``margin_px`` (``CanvasGrid.covering``); pass the truth ObjectImage (or its CanvasGrid) to
    stitch onto the truth's grid for a pixel-by-pixel comparison. Parts of patches outside the
    canvas are dropped. A pixel is covered when the summed window weight on it reaches
    ``min_weight`` (the window peaks at 1, so 0.05 is a twentieth of one patch centre).
    """
    amplitude = np.asarray(amplitude)
    phase = np.asarray(phase)
    positions_m = np.asarray(positions_m, dtype=np.float64)
    if amplitude.ndim != 3 or phase.shape != amplitude.shape:
        raise ValueError(
            f"need (n, h, w) amplitude and phase, got {amplitude.shape} and {phase.shape}"
        )
    n, h, w = amplitude.shape
    if positions_m.shape != (n, 2):
        raise ValueError(f"positions of shape {positions_m.shape} for {n} patches")
    if n == 0:
        raise ValueError("no patches to stitch")

    if isinstance(canvas, ObjectImage):
        canvas = CanvasGrid.of_image(canvas)
    elif canvas is None:
        canvas = CanvasGrid.covering(positions_m, (h, w), pixel_m, margin_px)
    if not np.allclose(canvas.pixel_m, pixel_m, rtol=1e-6, atol=0):
        raise ValueError(f"patch pixel {pixel_m} m differs from canvas pixel {canvas.pixel_m} m")

    weights = patch_window((h, w), window).astype(np.float32)
    # top-left corner of every patch in fractional canvas pixels
    top_left = canvas.pixel_coordinates(positions_m) - np.array([h // 2, w // 2])
    nearest = np.round(top_left)
    top_left = np.where(np.abs(top_left - nearest) < SNAP_PX, nearest, top_left)

    sums = np.zeros((*canvas.shape, len(SUMS)))
    _splat_bilinear(weights, amplitude, phase, top_left, sums)

    weight_sum, amplitude_sum, cos_sum, sin_sum = (sums[..., SUMS.index(name)] for name in SUMS)
    covered = weight_sum >= min_weight
    mean_amplitude = np.where(covered, amplitude_sum / np.where(covered, weight_sum, 1.0), 0.0)
    values = (mean_amplitude * np.exp(1j * np.arctan2(sin_sum, cos_sum))).astype(np.complex64)
    image = ObjectImage(values, canvas.pixel_m, canvas.center_m)
    return StitchedObject(image=image, weight=weight_sum, covered=covered)


def _splat_bilinear(
    window: np.ndarray,
    amplitude: np.ndarray,
    phase: np.ndarray,
    top_left: np.ndarray,
    sums: np.ndarray,
) -> None:
    """Add the window-weighted patch quantities (``SUMS``) into ``sums`` (H, W, len(SUMS)).

    A patch whose top-left sits at floor + (dy, dx) spreads each pixel over a 2x2 block. The
    bilinear weights are separable, so a chunk of patches is spread along y, then along x, into
    one (h + 1, w + 1) footprint per patch (vectorised over the chunk), which lands on the
    canvas with one contiguous slice-add per patch, all four sums at once (they are interleaved
    on the last axis). This beats ``np.bincount`` / ``np.add.at`` on flat indices
    (docs/performance.md): the adds run on contiguous memory and no index arrays are built. Rows and columns off the canvas are clipped.

    Patch quantities are float32 (numpy vectorises float32 cos/sin, not float64); the sums are
    float64. The chunk buffers are allocated once: fresh multi-MB temporaries per chunk are
    mmapped and page-faulted by glibc.
    """
    n, h, w = amplitude.shape
    chunk, depth = min(n, CHUNK_PATCHES), len(SUMS)
    phase32, trig = np.empty((chunk, h, w), np.float32), np.empty((chunk, h, w), np.float32)
    weighted = np.empty((chunk, h, w, depth), np.float32)
    along_y = np.empty((chunk, h + 1, w, depth), np.float32)
    footprint = np.empty((chunk, h + 1, w + 1, depth), np.float32)
    scratch_y, scratch_x = np.empty_like(weighted), np.empty_like(along_y)

    floor = np.floor(top_left).astype(np.int64)
    frac = (top_left - floor).astype(np.float32)
    # canvas span [start, stop) of each footprint, clipped to the canvas, and where that
    # clipped span starts inside the footprint
    canvas_shape = np.array(sums.shape[:2])
    span_start = np.clip(floor, 0, canvas_shape)
    span_stop = np.clip(floor + np.array([h + 1, w + 1]), 0, canvas_shape)
    offset = span_start - floor

    for first in range(0, n, chunk):
        m = min(chunk, n - first)
        part = slice(first, first + m)
        phase32[:m] = phase[part]
        quantities = weighted[:m]
        quantities[..., SUMS.index("weight")] = window
        np.multiply(window, amplitude[part], out=quantities[..., SUMS.index("amplitude")])
        for name, function in (("cos", np.cos), ("sin", np.sin)):
            function(phase32[:m], out=trig[:m])
            np.multiply(window, trig[:m], out=quantities[..., SUMS.index(name)])

        dy, dx = frac[part, 0, None, None, None], frac[part, 1, None, None, None]
        _spread_linear(quantities, dy, axis=1, out=along_y[:m], scratch=scratch_y[:m])
        _spread_linear(along_y[:m], dx, axis=2, out=footprint[:m], scratch=scratch_x[:m])
        for k in range(m):
            (r0, c0), (r1, c1) = span_start[first + k], span_stop[first + k]
            if r1 > r0 and c1 > c0:
                fr, fc = offset[first + k]
                sums[r0:r1, c0:c1] += footprint[k, fr : fr + r1 - r0, fc : fc + c1 - c0]


def _spread_linear(
    source: np.ndarray, frac: np.ndarray, axis: int, out: np.ndarray, scratch: np.ndarray
) -> None:
    """out[i] = (1 - frac) * source[i] + frac * source[i - 1] along ``axis`` (out one longer)."""
    size = source.shape[axis]

    def along(index: slice | int) -> tuple[slice | int, ...]:
        return (slice(None),) * axis + (index,)

    np.multiply(source, 1 - frac, out=out[along(slice(0, size))])
    out[along(size)] = 0
    np.multiply(source, frac, out=scratch)
    out[along(slice(1, size + 1))] += scratch
