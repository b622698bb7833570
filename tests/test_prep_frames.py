"""Frames to model inputs: sizes, crop vs bin, flux-invariant normalisation, bad counts."""

from __future__ import annotations

import numpy as np
import pytest

from ptycl.errors import ScanError
from ptycl.io.guards import check_frames
from ptycl.prep.frames import prepare_frames, resize_frames


def _diffraction(n: int, size: int, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of a bright centre with speckle: photons per frame on average."""
    y, x = np.mgrid[:size, :size] - size // 2
    envelope = np.exp(-(x**2 + y**2) / (2 * (size / 8) ** 2)) + 0.02
    speckle = rng.gamma(2.0, 0.5, size=(n, size, size))
    intensity = envelope * speckle
    intensity *= photons / intensity.sum(axis=(1, 2), keepdims=True)
    return rng.poisson(intensity).astype(np.uint32)


@pytest.mark.parametrize("resize", ["crop", "bin"])
@pytest.mark.parametrize(
    ("frame_shape", "input_size"), [((128, 128), 64), ((64, 64), 64), ((130, 100), 32)]
)
def test_shapes_and_dtype(resize: str, frame_shape: tuple[int, int], input_size: int) -> None:
    frames = np.random.default_rng(0).integers(0, 100, size=(5, *frame_shape)).astype(np.uint16)
    out = prepare_frames(frames, input_size, resize)
    assert out.shape == (5, input_size, input_size) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_crop_keeps_the_zero_frequency_pixel_centred() -> None:
    frames = np.zeros((1, 128, 96), dtype=np.uint32)
    frames[0, 64, 48] = 1000
    cropped = resize_frames(frames, 32, "crop")
    assert cropped[0, 16, 16] == 1000 and cropped.sum() == 1000


def test_bin_sums_blocks_and_keeps_the_counts() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 2**16, size=(3, 128, 128)).astype(np.uint32)
    binned = resize_frames(frames, 32, "bin")
    assert binned.shape == (3, 32, 32)
    np.testing.assert_allclose(
        binned.sum(axis=(1, 2)), frames.sum(axis=(1, 2), dtype=np.float64), rtol=1e-6
    )
    np.testing.assert_allclose(binned[:, 5, 7], frames[:, 20:24, 28:32].sum(axis=(1, 2)), rtol=1e-6)


def test_crop_and_bin_see_different_fields_of_view() -> None:
    frames = np.zeros((1, 128, 128), dtype=np.uint32)
    frames[0, 2, 2] = 50  # far from the centre: outside the central 64 x 64
    frames[0, 64, 64] = 50
    assert resize_frames(frames, 64, "crop").sum() == 50
    assert resize_frames(frames, 64, "bin").sum() == 100


def test_every_input_has_unit_rms_and_an_empty_frame_stays_zero() -> None:
    frames = _diffraction(4, 64, 1e5, np.random.default_rng(2))
    frames[2] = 0
    out = prepare_frames(frames, 64)
    rms = np.sqrt((out.astype(np.float64) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(rms[[0, 1, 3]], 1.0, rtol=1e-5)
    assert not out[2].any()


@pytest.mark.parametrize("resize", ["crop", "bin"])
def test_scaling_the_counts_leaves_the_input_unchanged(resize: str) -> None:
    counts = _diffraction(3, 128, 1e6, np.random.default_rng(3))
    np.testing.assert_allclose(
        prepare_frames(counts * 10, 64, resize),
        prepare_frames(counts, 64, resize),
        rtol=1e-5,
        atol=1e-6,
    )


def test_ten_times_the_photons_changes_the_input_only_by_shot_noise() -> None:
    rng = np.random.default_rng(4)
    y, x = np.mgrid[:64, :64] - 32
    pattern = np.exp(-(x**2 + y**2) / (2 * 8.0**2)) + 0.05
    pattern /= pattern.sum()
    dim = prepare_frames(rng.poisson(pattern * 1e6, size=(8, 64, 64)).astype(np.uint32), 64)
    bright = prepare_frames(rng.poisson(pattern * 1e7, size=(8, 64, 64)).astype(np.uint32), 64)
    truth = prepare_frames(pattern[None] * 1e12, 64)[0]
    # The raw counts differ tenfold; the inputs differ by less than 2 % of their RMS (= 1).
    assert np.abs(dim.mean(axis=0) - bright.mean(axis=0)).mean() < 0.02
    # and the brighter frames sit closer to the noiseless input, as shot noise falls.
    assert np.abs(bright - truth).mean() < np.abs(dim - truth).mean() < 0.05


def test_masked_pixels_do_not_count() -> None:
    frames = np.full((2, 64, 64), 10, dtype=np.uint32)
    frames[:, 30, 31] = 10**6  # a hot pixel
    mask = np.zeros((64, 64), dtype=bool)
    mask[30, 31] = True
    out = prepare_frames(frames, 64, mask=mask)
    assert out[0, 30, 31] == 0
    assert np.allclose(np.delete(out[0].ravel(), 30 * 64 + 31), np.sqrt(4096 / 4095), rtol=1e-5)


def test_frames_smaller_than_the_input_are_refused() -> None:
    with pytest.raises(ValueError, match="smaller than the input size"):
        prepare_frames(np.ones((1, 32, 32), np.uint32), 64)


@pytest.mark.parametrize(
    ("value", "problem"),
    [(np.nan, "NaN or infinite"), (-np.inf, "NaN or infinite"), (-1.0, "negative")],
)
def test_check_frames_names_the_bad_frame(value: float, problem: str) -> None:
    frames = np.ones((4, 8, 8), dtype=np.float32)
    frames[2, 1, 1] = value
    with pytest.raises(ScanError, match=f"scan.h5: frame 12 has {problem} counts"):
        check_frames(frames, "scan.h5", indices=np.arange(10, 14))
    signed = np.ones((2, 8, 8), dtype=np.int32)
    signed[1, 0, 0] = -5
    with pytest.raises(ScanError, match="frame 1 has negative counts"):
        check_frames(signed, "scan.h5")
    check_frames(np.zeros((2, 8, 8), np.uint16), "scan.h5")  # unsigned counts are always fine
