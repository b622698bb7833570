"""Detector frames to model inputs: resize to the model's input size, normalise the intensity.

Normalisation (flux invariant): each frame becomes ``sqrt(counts / mean(counts))``, i.e. the
square root of the counts (the diffracted amplitude; it also makes Poisson noise roughly
uniform, variance about 1/4 count) divided by the frame's root-mean-square amplitude,
``sqrt(mean(counts))``. Multiplying the photon budget by any factor multiplies counts and
their mean alike, so the input is unchanged up to shot noise, and every input has RMS 1
whatever the beam did. A frame with no counts stays all zero.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Resize = Literal["crop", "bin"]


def input_size_problem(frame_shape: tuple[int, int], input_size: int) -> str | None:
    """Why frames of ``frame_shape`` cannot become model inputs of ``input_size``, or None."""
    height, width = frame_shape
    if min(height, width) < input_size:
        return f"frames are {height}x{width}, smaller than the model input {input_size}"
    return None


def bin_factor(frame_shape: tuple[int, int], input_size: int, resize: Resize) -> int:
    """Detector pixels per input pixel along each axis: 1 for "crop"; for "bin", the largest
    whole factor whose ``input_size * factor`` centre fits both sides of the frame."""
    if resize == "crop":
        return 1
    return min(frame_shape[0] // input_size, frame_shape[1] // input_size)


def resize_frames(frames: np.ndarray, input_size: int, resize: Resize) -> np.ndarray:
    """(n, H, W) -> (n, input_size, input_size), same dtype as given for "crop".

    "crop" keeps the central ``input_size`` pixels: the zero-frequency pixel (H // 2, W // 2)
    lands on (input_size // 2, input_size // 2), as a centred FFT expects. "bin" first crops the
    centre to the largest multiple of ``input_size`` that fits, then sums f x f blocks (counts
    add, so the result is float32 to avoid overflow of narrow integer types).
    """
    if resize not in ("crop", "bin"):
        raise ValueError(f"resize must be 'crop' or 'bin', got {resize!r}")
    n, h, w = frames.shape
    if h < input_size or w < input_size:
        raise ValueError(f"frames of {h}x{w} pixels are smaller than the input size {input_size}")
    factor = bin_factor((h, w), input_size, resize)
    side = input_size * factor
    top, left = h // 2 - side // 2, w // 2 - side // 2
    centre = frames[:, top : top + side, left : left + side]
    if factor == 1:
        return centre
    blocks = centre.reshape(n, input_size, factor, input_size, factor)
    return blocks.sum(axis=(2, 4), dtype=np.float32)


def normalise_intensity(frames: np.ndarray) -> np.ndarray:
    """float32 ``sqrt(counts / mean(counts))`` per frame (see the module docstring)."""
    out = frames.astype(np.float32, copy=True)
    mean = out.mean(axis=(1, 2), dtype=np.float64)
    scale = np.divide(1.0, mean, out=np.zeros_like(mean), where=mean > 0).astype(np.float32)
    out *= scale[:, None, None]
    return np.sqrt(out, out=out)


def prepare_frames(
    frames: np.ndarray, input_size: int, resize: Resize = "crop", mask: np.ndarray | None = None
) -> np.ndarray:
    """Raw (n, H, W) counts -> float32 (n, input_size, input_size) model inputs.

    ``mask`` (H, W) bool marks bad pixels (True), which are zeroed before resizing so a hot
    pixel cannot dominate a frame's normalisation.
    """
    if frames.ndim != 3:
        raise ValueError(f"expected (n, H, W) frames, got shape {frames.shape}")
    if mask is not None and mask.any():
        frames = np.where(mask[None], 0, frames)
    return normalise_intensity(resize_frames(frames, input_size, resize))
