"""Cutting object patches at probe positions: exactness, sub-pixel accuracy, phase reference."""

from __future__ import annotations

import numpy as np
import pytest

from ptycl.io.records import ObjectImage
from ptycl.prep.patches import cut_patches, label_patches, reference_phase

PIXEL_M = (5.9e-8, 6.1e-8)  # (y, x); not exactly representable, unequal so axes cannot swap
CENTER_M = (1.3e-6, -0.7e-6)
SHAPE = (120, 150)


def _object(values) -> ObjectImage:
    return ObjectImage(
        values=np.asarray(values, dtype=np.complex64), pixel_m=PIXEL_M, center_m=CENTER_M
    )


def _positions(pixel_offsets) -> np.ndarray:
    """(y, x) positions in metres of the given pixel offsets from the object's centre pixel."""
    return np.asarray(CENTER_M) + np.asarray(pixel_offsets, dtype=np.float64) * np.asarray(PIXEL_M)


def _random_object(seed: int) -> ObjectImage:
    rng = np.random.default_rng(seed)
    return _object(rng.uniform(0.2, 1.0, SHAPE) * np.exp(1j * rng.uniform(-3, 3, SHAPE)))


def test_integer_positions_equal_plain_slices_bit_for_bit():
    obj = _random_object(0)
    size = 32
    # Offsets from the centre pixel (60, 75), including patches touching each border.
    offsets = np.array([[0, 0], [-3, 7], [-44, -59], [44, 59], [-44, 59]])
    patches = cut_patches(obj, _positions(offsets), size)
    assert patches.dtype == np.complex64 and patches.shape == (len(offsets), size, size)
    for (dy, dx), patch in zip(offsets, patches, strict=True):
        top, left = 60 + dy - size // 2, 75 + dx - size // 2
        np.testing.assert_array_equal(patch, obj.values[top : top + size, left : left + size])


def test_centre_pixel_sits_at_the_position():
    # Cubic convolution reproduces linear functions exactly, so on a field equal to its own
    # pixel coordinates (y + i x), the patch's centre pixel reads the position's coordinates.
    yy, xx = np.indices(SHAPE, dtype=np.float64)
    obj = _object(yy + 1j * xx)
    offsets = np.array([[0.25, -0.5], [10.7, 3.1], [-20.01, 30.99]])
    patches = cut_patches(obj, _positions(offsets), 16)
    centre = patches[:, 8, 8]
    np.testing.assert_allclose(centre.real, 60 + offsets[:, 0], atol=1e-4)
    np.testing.assert_allclose(centre.imag, 75 + offsets[:, 1], atol=1e-4)


@pytest.mark.parametrize(("period_px", "tolerance"), [(16.0, 3e-3), (32.0, 3e-4)])
def test_subpixel_patches_of_a_band_limited_object_match_the_analytic_function(
    period_px, tolerance
):
    def field(y, x):
        # Band-limited: sinusoids with periods >= period_px, in amplitude and phase.
        phase = 0.8 * np.sin(2 * np.pi * (y / period_px + x / (1.5 * period_px)) + 0.3)
        amplitude = 0.8 + 0.2 * np.cos(2 * np.pi * (x / period_px - y / (2 * period_px)))
        return amplitude * np.exp(1j * phase)

    obj = _object(field(*np.indices(SHAPE, dtype=np.float64)))
    offsets = np.random.default_rng(1).uniform(-20, 20, size=(20, 2))
    patches = cut_patches(obj, _positions(offsets), 32)
    rows = 60 + offsets[:, 0, None, None] + np.arange(32)[None, :, None] - 16
    cols = 75 + offsets[:, 1, None, None] + np.arange(32)[None, None, :] - 16
    np.testing.assert_allclose(patches, field(rows, cols), atol=tolerance)


def test_patch_outside_the_object_is_refused():
    obj = _random_object(2)
    cut_patches(obj, _positions([[44, 59]]), 32)  # touches the last row and column: fine
    with pytest.raises(ValueError, match="position 1"):
        cut_patches(obj, _positions([[0, 0], [44.5, 0]]), 32)
    with pytest.raises(ValueError, match="outside"):
        cut_patches(obj, _positions([[0, -59.01]]), 32)


def test_label_patches_are_amplitude_and_phase_of_the_cut():
    obj = _random_object(3)
    positions = _positions(np.random.default_rng(4).uniform(-10, 10, size=(5, 2)))
    amplitude, phase = label_patches(obj, positions, 24)
    patches = cut_patches(obj, positions, 24)
    assert amplitude.dtype == phase.dtype == np.float32 and amplitude.shape == phase.shape == (
        5,
        24,
        24,
    )
    np.testing.assert_allclose(amplitude, np.abs(patches), rtol=1e-6)
    np.testing.assert_allclose(np.exp(1j * phase), patches / np.abs(patches), atol=1e-5)


def test_reference_phase_removes_any_global_offset_even_near_pi():
    rng = np.random.default_rng(5)
    amplitude = rng.uniform(0.3, 1.0, SHAPE)
    phase = 0.5 * rng.standard_normal(SHAPE)
    positions = _positions(rng.uniform(-15, 15, size=(30, 2)))
    referenced = [
        reference_phase(_object(amplitude * np.exp(1j * (phase + offset))), positions, 32)
        for offset in (0.3, 3.0, -3.1)
    ]
    for image in referenced[1:]:
        np.testing.assert_allclose(image.values, referenced[0].values, atol=1e-5)
    np.testing.assert_allclose(np.abs(referenced[0].values), amplitude, rtol=1e-5)
    assert referenced[0].pixel_m == PIXEL_M and referenced[0].center_m == CENTER_M

    # Over the scanned region (the union of the probe-sized squares around the positions) the
    # amplitude-weighted circular mean phase is now zero.
    scanned = np.zeros(SHAPE, dtype=bool)
    for row, col in np.rint(referenced[0].pixel_coordinates(positions)).astype(int):
        scanned[row - 16 : row + 16, col - 16 : col + 16] = True
    assert abs(np.angle(referenced[0].values[scanned].sum(dtype=np.complex128))) < 1e-6
    assert (
        abs(np.angle(referenced[0].values.sum(dtype=np.complex128))) > 1e-3
    )  # a different region, another mean


@pytest.mark.parametrize("kind", ["zone_plate", "aperture"])
def test_illuminated_support_is_the_smallest_centred_disc_holding_90_percent(kind):
    from ptycl.prep.patches import illuminated_support
    from ptycl.simulate.probe import make_probe

    probe = make_probe(kind, 64, 16.0, np.random.default_rng(3))
    intensity = np.abs(probe) ** 2 / np.sum(np.abs(probe) ** 2)
    support = illuminated_support(probe, (1.0, 1.0), (1.0, 1.0), 64)
    rows, cols = np.indices(support.shape) - 32
    radius = np.hypot(rows, cols)
    assert intensity[support].sum() >= 0.9
    assert support[radius <= radius[support].max()].all()  # a filled disc about the centre
    assert intensity[radius < radius[support].max()].sum() < 0.9  # and no smaller one will do
    # On a label grid twice as coarse the same disc covers a quarter of the pixels (±15%).
    coarse = illuminated_support(probe, (1.0, 1.0), (2.0, 2.0), 32)
    assert coarse.sum() == pytest.approx(support.sum() / 4, rel=0.15)


@pytest.mark.parametrize(
    ("frame_shape", "resize", "factor"),
    [
        ((128, 128), "crop", 1),
        ((128, 128), "bin", 2),
        ((200, 200), "bin", 3),  # not a whole multiple of 64: cropped to 192, then binned
        ((128, 256), "bin", 2),  # the factor both sides allow
        ((100, 100), "bin", 1),
    ],
)
def test_the_label_pixel_is_that_of_the_detector_area_the_input_spans(frame_shape, resize, factor):
    """lambda z / (the extent the prepared input spans on the detector), per axis."""
    from ptycl.io.records import ScanGeometry
    from ptycl.prep.frames import resize_frames
    from ptycl.prep.patches import label_pixel_m

    geometry = ScanGeometry(
        energy_j=8800 * 1.602176634e-19,
        distance_m=2.0,
        detector_pixel_m=(75e-6, 55e-6),
        frame_shape=frame_shape,
    )
    # The prepared input holds 64 x factor detector pixels per axis (counts are conserved).
    frames = np.ones((1, *frame_shape), dtype=np.float32)
    assert resize_frames(frames, 64, resize).sum() == 64 * factor * 64 * factor
    lz = geometry.wavelength_m * geometry.distance_m
    expected = tuple(lz / (64 * factor * pixel) for pixel in geometry.detector_pixel_m)
    np.testing.assert_allclose(label_pixel_m(geometry, 64, resize), expected, rtol=1e-12)
    if frame_shape[0] == frame_shape[1] == 64 * factor and resize == "bin":
        np.testing.assert_allclose(label_pixel_m(geometry, 64, resize), geometry.object_pixel_m)
