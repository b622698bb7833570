"""Stitching patches cut from a known object gives the object back where it is covered."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ptycl.io.records import ObjectImage
from ptycl.recon.stitch import CanvasGrid, patch_window, stitch_patches

PIXEL_M = (10e-9, 10e-9)
PATCH = 32


def random_object(shape=(160, 170), smooth_px=0.0, seed=0) -> ObjectImage:
    """Amplitude in [0.2, 1], phase over the whole (-pi, pi] so that stitching meets wraps."""
    rng = np.random.default_rng(seed)
    amplitude, phase = rng.random(shape), rng.random(shape)
    if smooth_px:
        amplitude = ndimage.gaussian_filter(amplitude, smooth_px, mode="wrap")
        phase = ndimage.gaussian_filter(phase, smooth_px, mode="wrap")
        amplitude = (amplitude - amplitude.min()) / np.ptp(amplitude)
        phase = (phase - phase.min()) / np.ptp(phase)
    amplitude = 0.2 + 0.8 * amplitude
    phase = np.angle(np.exp(1j * 2 * np.pi * phase))
    return ObjectImage((amplitude * np.exp(1j * phase)).astype(np.complex64), PIXEL_M, (0.0, 0.0))


def lattice_positions(
    step_px: int, count: tuple[int, int], jitter_px: float = 0.0, seed=1
) -> np.ndarray:
    """(y, x) positions in metres on a raster around the origin, optionally jittered."""
    rng = np.random.default_rng(seed)
    ys = (np.arange(count[0]) - count[0] // 2) * step_px
    xs = (np.arange(count[1]) - count[1] // 2) * step_px
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2).astype(float)
    grid += rng.uniform(-jitter_px, jitter_px, grid.shape)
    return grid * np.array(PIXEL_M)


def cut_integer(obj: ObjectImage, positions_m: np.ndarray, size: int) -> np.ndarray:
    corners = np.rint(obj.pixel_coordinates(positions_m)).astype(int) - size // 2
    return np.stack([obj.values[r : r + size, c : c + size] for r, c in corners])


def cut_subpixel(obj: ObjectImage, positions_m: np.ndarray, size: int) -> np.ndarray:
    """Patches sampled at fractional positions by cubic-spline interpolation (scipy.ndimage)."""
    centres = obj.pixel_coordinates(positions_m)
    offsets = np.arange(size) - size // 2
    rows = centres[:, 0, None, None] + offsets[None, :, None]
    cols = centres[:, 1, None, None] + offsets[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    sample = lambda part: ndimage.map_coordinates(part, [rows, cols], order=3)  # noqa: E731
    return sample(obj.values.real) + 1j * sample(obj.values.imag)


def footprint_union(obj: ObjectImage, positions_m: np.ndarray, size: int) -> np.ndarray:
    union = np.zeros(obj.values.shape, bool)
    for r, c in np.rint(obj.pixel_coordinates(positions_m)).astype(int) - size // 2:
        union[r : r + size, c : c + size] = True
    return union


@pytest.mark.parametrize("window", ["uniform", "tukey", "hann"])
def test_integer_positions_give_back_the_object_where_covered(window):
    truth = random_object()
    positions = lattice_positions(step_px=9, count=(11, 12))
    patches = cut_integer(truth, positions, PATCH)

    stitched = stitch_patches(
        np.abs(patches), np.angle(patches), positions, PIXEL_M, canvas=truth, window=window
    )

    covered = stitched.covered
    union = footprint_union(truth, positions, PATCH)
    assert not (covered & ~union).any(), "covered pixels must lie under some patch"
    # the windows taper to almost nothing at patch edges: only the outermost ring may drop out
    assert covered.sum() >= 0.9 * union.sum()
    np.testing.assert_allclose(stitched.image.values[covered], truth.values[covered], atol=2e-6)
    assert np.all(stitched.image.values[~covered] == 0)
    assert np.isfinite(stitched.image.values).all()
    assert stitched.image.pixel_m == truth.pixel_m and stitched.image.center_m == truth.center_m


def test_uniform_window_weight_counts_the_patches_over_each_pixel():
    truth = random_object()
    positions = lattice_positions(step_px=9, count=(4, 5))
    patches = cut_integer(truth, positions, PATCH)
    stitched = stitch_patches(
        np.abs(patches), np.angle(patches), positions, PIXEL_M, canvas=truth, window="uniform"
    )

    counts = np.zeros(truth.values.shape)
    for r, c in np.rint(truth.pixel_coordinates(positions)).astype(int) - PATCH // 2:
        counts[r : r + PATCH, c : c + PATCH] += 1
    np.testing.assert_allclose(stitched.weight, counts, atol=1e-9)
    np.testing.assert_array_equal(stitched.covered, counts > 0)


def test_phase_near_pi_averages_across_the_wrap():
    # two patches at one position: phases pi - 0.1 and -pi + 0.1 are 0.2 apart, and average to
    # pi (a naive mean of the numbers would give 0); amplitude stays, it does not shrink
    phase = np.stack([np.full((8, 8), np.pi - 0.1), np.full((8, 8), -np.pi + 0.1)])
    amplitude = np.full((2, 8, 8), 0.7)
    stitched = stitch_patches(amplitude, phase, np.zeros((2, 2)), PIXEL_M, window="uniform")

    values = stitched.image.values[stitched.covered]
    assert values.size == 64
    np.testing.assert_allclose(np.abs(np.angle(values)), np.pi, atol=1e-6)
    np.testing.assert_allclose(np.abs(values), 0.7, atol=1e-6)


def test_subpixel_positions_give_back_a_smooth_object_with_a_small_error():
    truth = random_object(smooth_px=4.0, seed=2)
    positions = lattice_positions(step_px=8, count=(12, 12), jitter_px=2.5)
    patches = cut_subpixel(truth, positions, PATCH)

    stitched = stitch_patches(np.abs(patches), np.angle(patches), positions, PIXEL_M, canvas=truth)

    # away from the scan's edge: where at least two patch centres' worth of weight landed
    inner = stitched.weight >= 2.0
    assert inner.sum() > 5000
    error = np.abs(stitched.image.values[inner] - truth.values[inner])
    # bilinear splatting blurs by at most half a pixel: small on a 4-pixel-smooth object whose
    # mean amplitude is 0.6 (measured: mean 0.004, max 0.021)
    assert error.mean() < 6e-3
    assert error.max() < 4e-2
    # and it matters: snapping positions to the nearest pixel is worse (measured: 3x)
    snapped = stitch_patches(
        np.abs(patches),
        np.angle(patches),
        np.rint(positions / PIXEL_M) * PIXEL_M,
        PIXEL_M,
        canvas=truth,
    )
    snapped_error = np.abs(snapped.image.values[inner] - truth.values[inner])
    assert snapped_error.mean() > 2 * error.mean()


def test_default_canvas_holds_every_patch_where_object_image_maps_the_positions():
    truth = random_object(shape=(200, 200))
    positions = lattice_positions(step_px=7, count=(9, 6)) + np.array([130e-9, -40e-9])
    patches = cut_integer(truth, positions, PATCH)

    stitched = stitch_patches(
        np.abs(patches), np.angle(patches), positions, PIXEL_M, window="uniform", margin_px=3
    )
    image = stitched.image

    # each patch sits, whole, where the stitched image's own pixel_coordinates put it
    corners = np.rint(image.pixel_coordinates(positions)).astype(int) - PATCH // 2
    for (r, c), patch in zip(corners, patches, strict=True):
        assert r >= 3 and c >= 3
        np.testing.assert_allclose(image.values[r : r + PATCH, c : c + PATCH], patch, atol=2e-6)
    # positions on the pixel lattice land on pixels: the canvas centre is snapped to it
    np.testing.assert_allclose(image.pixel_coordinates(positions) % 1, 0, atol=1e-9)
    # the margin (and the spare bilinear row) stays uncovered
    assert not stitched.covered[:3].any() and not stitched.covered[:, -3:].any()
    assert stitched.covered.sum() == footprint_union(truth, positions, PATCH).sum()


def test_patches_beyond_a_given_canvas_are_clipped():
    truth = random_object(shape=(64, 64))
    # half of these patches hang over the truth's edge
    positions = lattice_positions(step_px=16, count=(5, 5))
    big = random_object(shape=(128, 128))
    patches = cut_integer(big, positions, PATCH)
    inside = big.values[32:96, 32:96]  # the same 64x64 area as `truth`'s grid

    stitched = stitch_patches(
        np.abs(patches), np.angle(patches), positions, PIXEL_M, canvas=truth, window="uniform"
    )
    assert stitched.covered.all()
    np.testing.assert_allclose(stitched.image.values, inside, atol=2e-6)


def test_probe_window_and_errors():
    probe_intensity = np.exp(-((np.arange(PATCH) - PATCH // 2) ** 2) / 50.0)
    window = np.outer(probe_intensity, probe_intensity)
    np.testing.assert_allclose(patch_window((PATCH, PATCH), window).max(), 1.0)
    assert patch_window((PATCH, PATCH), "tukey")[PATCH // 2, PATCH // 2] == pytest.approx(1.0)
    assert 0 < patch_window((PATCH, PATCH), "hann")[0, 0] < 0.05

    truth = random_object()
    positions = lattice_positions(step_px=9, count=(5, 5))
    patches = cut_integer(truth, positions, PATCH)
    stitched = stitch_patches(
        np.abs(patches), np.angle(patches), positions, PIXEL_M, canvas=truth, window=window
    )
    np.testing.assert_allclose(
        stitched.image.values[stitched.covered], truth.values[stitched.covered], atol=2e-6
    )

    with pytest.raises(ValueError, match="differs from canvas pixel"):
        stitch_patches(np.abs(patches), np.angle(patches), positions, (5e-9, 5e-9), canvas=truth)
    with pytest.raises(ValueError, match="window of shape"):
        stitch_patches(
            np.abs(patches), np.angle(patches), positions, PIXEL_M, window=np.ones((3, 3))
        )
    with pytest.raises(ValueError, match="positions of shape"):
        stitch_patches(np.abs(patches), np.angle(patches), positions[:-1], PIXEL_M)


def test_canvas_grid_of_image_matches_the_image():
    truth = random_object(shape=(50, 61))
    grid = CanvasGrid.of_image(truth)
    positions = np.array([[0.0, 0.0], [123e-9, -77e-9]])
    np.testing.assert_allclose(
        grid.pixel_coordinates(positions), truth.pixel_coordinates(positions)
    )
