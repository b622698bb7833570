"""Physics of the simulated beamline: probes, objects, scan paths, far field, detector, scans."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import argrelmin
from scipy.spatial import ConvexHull, cKDTree

from ptycl.config import DetectorSettings, SimulateSettings
from ptycl.io.records import ScanGeometry
from ptycl.prep.patches import cut_patches
from ptycl.simulate import beamline
from ptycl.simulate.beamline import simulate_scan
from ptycl.simulate.forward import detect, exit_waves, expected_counts, far_field_intensity
from ptycl.simulate.objects import FAMILIES, make_object
from ptycl.simulate.probe import make_probe
from ptycl.simulate.scan_path import add_jitter, fermat_spiral, raster

FLOAT32_UNIT_SLACK = 1e-6  # |exp(i phi)| stored as complex64 can exceed 1 by a rounding step


def _disc(size: int, diameter: float) -> np.ndarray:
    yy, xx = np.indices((size, size)) - size // 2
    return np.clip(diameter / 2 - np.hypot(yy, xx) + 0.5, 0.0, 1.0).astype(np.complex64)


# ---------------------------------------------------------------- photon budget


def test_pure_transmission_object_delivers_the_whole_budget():
    rng = np.random.default_rng(0)
    photons, n = 1e4, 400
    probe = make_probe("zone_plate", 64, 16.0, rng)
    expected = expected_counts(
        far_field_intensity(exit_waves(probe, np.ones((n, 64, 64), np.complex64))), photons
    )
    np.testing.assert_allclose(expected.sum(axis=(1, 2)), photons, rtol=1e-5)

    frames, _ = detect(expected, DetectorSettings(), rng)
    # Sum of Poisson counts is Poisson(photons): the mean over n frames has sigma sqrt(photons / n).
    assert abs(frames.sum(axis=(1, 2)).mean() - photons) < 3 * np.sqrt(photons / n)


def test_absorbing_object_delivers_the_transmitted_fraction():
    rng = np.random.default_rng(1)
    photons, n = 1e4, 400
    probe = make_probe("aperture", 64, 16.0, rng)
    # Amplitude 0.5 transmits a quarter of the power; the phase texture must not matter.
    patches = (0.5 * np.exp(1j * rng.uniform(-1, 1, (n, 64, 64)))).astype(np.complex64)
    expected = expected_counts(far_field_intensity(exit_waves(probe, patches)), photons)
    np.testing.assert_allclose(expected.sum(axis=(1, 2)), 0.25 * photons, rtol=1e-5)
    frames, _ = detect(expected, DetectorSettings(), rng)
    assert abs(frames.sum(axis=(1, 2)).mean() - 0.25 * photons) < 3 * np.sqrt(0.25 * photons / n)

    # A half-absorbing patch: the expected total is photons * sum|P O|^2 / sum|P|^2, also for an
    # unnormalised probe passed with its power.
    half = np.ones((1, 64, 64), np.complex64)
    half[:, :, :32] = 0.3
    loud_probe = 7.0 * probe
    expected = expected_counts(
        far_field_intensity(exit_waves(loud_probe, half)), photons, probe_power=49.0
    )
    transmitted = np.sum(np.abs(loud_probe * half[0]) ** 2) / np.sum(np.abs(loud_probe) ** 2)
    np.testing.assert_allclose(expected.sum(), photons * transmitted, rtol=1e-5)


# ---------------------------------------------------------------- far-field diffraction


def test_uniform_disc_gives_airy_first_zero_at_1_22_lambda_z_over_d():
    geometry = ScanGeometry(
        energy_j=8800 * 1.602176634e-19,
        distance_m=2.0,
        detector_pixel_m=(75e-6, 75e-6),
        frame_shape=(512, 512),
    )
    diameter_px = 32
    diameter_m = diameter_px * geometry.object_pixel_m[1]
    predicted_px = (
        1.22
        * geometry.wavelength_m
        * geometry.distance_m
        / diameter_m
        / geometry.detector_pixel_m[1]
    )
    intensity = far_field_intensity(
        exit_waves(_disc(512, diameter_px), np.ones((1, 512, 512), np.complex64))
    )[0]
    centre = 256
    for profile in (intensity[centre, centre:], intensity[centre:, centre]):
        r = argrelmin(profile.astype(np.float64))[0][0]
        # Near its zero the intensity is quadratic in r: a parabola through 3 samples finds it.
        a, b, _ = np.polyfit(np.arange(r - 1, r + 2), profile[r - 1 : r + 2], 2)
        assert -b / (2 * a) == pytest.approx(predicted_px, rel=0.01)  # 19.52 px


def test_gaussian_probe_diffracts_to_the_analytic_gaussian():
    sigma_px, n = 3.0, 64
    yy, xx = np.indices((n, n)) - n // 2
    gaussian = np.exp(-(yy**2 + xx**2) / (2 * sigma_px**2)).astype(np.complex64)
    intensity = far_field_intensity(exit_waves(gaussian, np.ones((1, n, n), np.complex64)))[0]
    # FT of exp(-x^2 / 2 s^2) is proportional to exp(-2 pi^2 s^2 f^2), f = k / N cycles per pixel.
    analytic = np.exp(-4 * np.pi**2 * sigma_px**2 * (yy**2 + xx**2) / n**2)
    analytic *= np.sum(np.abs(gaussian) ** 2) / analytic.sum()  # unitary: same total power
    np.testing.assert_allclose(intensity, analytic, atol=1e-5 * analytic.max())
    assert np.unravel_index(np.argmax(intensity), intensity.shape) == (n // 2, n // 2)


def test_phase_ramp_shifts_the_pattern_by_its_frequency():
    n, ky, kx = 64, 3, -5
    probe = make_probe("zone_plate", n, 16.0, np.random.default_rng(2))
    yy, xx = np.indices((n, n))
    ramp = np.exp(2j * np.pi * (ky * yy + kx * xx) / n).astype(np.complex64)
    flat = far_field_intensity(exit_waves(probe, np.ones((1, n, n), np.complex64)))[0]
    shifted = far_field_intensity(exit_waves(probe, ramp[None]))[0]
    np.testing.assert_allclose(
        shifted, np.roll(flat, (ky, kx), axis=(0, 1)), atol=1e-6 * flat.max()
    )


# ---------------------------------------------------------------- detector


def test_detector_applies_noise_threshold_saturation_gap_and_bad_pixels():
    rng = np.random.default_rng(3)
    n, size = 200, 16
    level = np.geomspace(0.5, 3e5, size * size).reshape(size, size)
    expected = np.broadcast_to(level, (n, size, size))
    settings = DetectorSettings(
        dtype="uint16",
        saturation_counts=2**20,
        threshold_counts=2,
        bad_pixel_fraction=0.02,
        gap_columns=2,
    )
    frames, mask = detect(expected, settings, rng)

    assert (
        frames.dtype == np.uint16 and frames.shape == (n, size, size) and mask.shape == (size, size)
    )
    full_scale = 65535  # the dtype's range is tighter than the 2^20 full well
    assert not np.any((frames >= 1) & (frames <= 2))  # at or below the threshold reads 0
    assert frames.max() <= full_scale
    gap = np.zeros((size, size), bool)
    gap[:, 7:9] = True
    assert np.all(frames[:, gap] == 0) and np.all(mask[gap])

    bad = mask & ~gap
    assert bad.sum() == round(0.02 * (size * size - gap.sum()))
    stuck = frames[:, bad]
    assert np.all(stuck == stuck[0]) and set(np.unique(stuck)) <= {0, full_scale}

    good = ~mask & (level > 100) & (level < 3e4)  # far from threshold and saturation
    assert np.all(frames[:, ~mask & (level > 1e5)] == full_scale)
    chi2 = np.mean((frames[:, good] - expected[:, good]) ** 2 / expected[:, good])
    assert chi2 == pytest.approx(1.0, abs=0.05)  # Poisson: variance equals the mean


# ---------------------------------------------------------------- probes, objects, scan paths


@pytest.mark.parametrize("kind", ["zone_plate", "aperture"])
def test_probe_is_unit_power_centred_and_about_its_diameter(kind):
    probe = make_probe(kind, 64, 16.0, np.random.default_rng(4))
    power = np.abs(probe) ** 2
    assert probe.dtype == np.complex64 and probe.shape == (64, 64)
    assert power.sum() == pytest.approx(1.0, rel=1e-5)
    yy, xx = np.indices(power.shape) - 32
    assert abs((power * yy).sum()) < 0.5 and abs((power * xx).sum()) < 0.5
    radius = np.hypot(yy, xx)
    assert power[radius <= 8].sum() > 0.6 and power[radius <= 12].sum() > 0.8


def test_zone_plate_far_field_is_the_pupil_with_a_dark_central_stop():
    probe = make_probe("zone_plate", 64, 16.0, np.random.default_rng(5))
    intensity = far_field_intensity(exit_waves(probe, np.ones((1, 64, 64), np.complex64)))[0]
    assert intensity[32, 32] < 1e-6 * intensity.max()
    lit = intensity > 1e-3 * intensity.max()
    assert intensity[lit].sum() > 0.999  # all the power inside the annular pupil
    # The lit annulus is uniform (a zone plate's pupil), not a peaked pattern.
    assert intensity[lit].std() < 0.05 * intensity[lit].mean()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_objects_are_physical_and_random_per_call(family):
    first = make_object(family, (96, 128), np.random.default_rng(6))
    second = make_object(family, (96, 128), np.random.default_rng(7))
    for obj in (first, second):
        assert obj.dtype == np.complex64 and obj.shape == (96, 128)
        amplitude, phase = np.abs(obj), np.angle(obj)
        assert amplitude.min() > 0 and amplitude.max() <= 1 + FLOAT32_UNIT_SLACK
        assert phase.min() >= -1.5 - 1e-6 and phase.max() <= 1e-6
    assert np.abs(first - second).mean() > 0.01


def _family_features(obj: np.ndarray) -> np.ndarray:
    """Cues that tell families apart: rectilinearity, absorption-phase coupling, binariness."""
    phase = np.angle(obj).astype(np.float64)
    gy, gx = np.gradient(phase)
    energy = gy**2 + gx**2
    direction = np.abs(np.arctan2(gy, gx)) % (np.pi / 2)
    along_axis = np.minimum(direction, np.pi / 2 - direction) < np.deg2rad(10)
    rectilinear = (energy * along_axis).sum() / energy.sum()
    coupling = abs(np.corrcoef(np.log(np.abs(obj)).ravel(), phase.ravel())[0, 1])
    span = np.ptp(phase)
    binary = np.mean((phase < phase.min() + 0.1 * span) | (phase > phase.max() - 0.1 * span))
    return np.array([rectilinear, coupling, binary])


def test_families_differ_in_statistics():
    seeds = range(3)
    features = {
        f: np.array(
            [_family_features(make_object(f, (128, 128), np.random.default_rng(s))) for s in seeds]
        )
        for f in FAMILIES
    }
    families = sorted(features)
    for i, a in enumerate(families):
        for b in families[i + 1 :]:
            lo = np.maximum(features[a].min(0), features[b].min(0))
            hi = np.minimum(features[a].max(0), features[b].max(0))
            # Some feature's ranges over the seeds are disjoint, with a gap of at least 0.03.
            assert np.any(lo - hi > 0.03), f"{a} and {b} overlap in every feature"


def test_unknown_family_and_probe_kind_are_refused():
    with pytest.raises(ValueError, match="unknown sample family"):
        make_object("gold", (32, 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown probe kind"):
        make_probe("lens", 32, 8.0, np.random.default_rng(0))


def test_fermat_spiral_has_the_density_of_a_raster_with_the_same_step():
    step = 2e-7
    spiral = fermat_spiral(1000, step)
    assert spiral.shape == (1000, 2)
    np.testing.assert_allclose(spiral.mean(axis=0), 0.0, atol=1e-12 * step)
    area_per_point = ConvexHull(spiral).volume / 1000  # 2-D "volume" is the area
    assert area_per_point == pytest.approx(step**2, rel=0.05)
    nearest = cKDTree(spiral).query(spiral, k=2)[0][:, 1]
    assert np.median(nearest) == pytest.approx(0.95 * step, rel=0.05)

    grid = raster(10, step)
    assert grid.shape == (10, 2)
    np.testing.assert_allclose(grid.mean(axis=0), 0.0, atol=1e-12 * step)
    np.testing.assert_allclose(cKDTree(grid).query(grid, k=2)[0][:, 1], step)
    np.testing.assert_allclose(grid[1] - grid[0], [0.0, step])  # rows of x first


def test_jitter_has_the_requested_spread():
    positions = np.zeros((20000, 2))
    jittered = add_jitter(positions, 3e-9, np.random.default_rng(8))
    np.testing.assert_allclose(jittered.std(axis=0), 3e-9, rtol=0.03)


# ---------------------------------------------------------------- whole scans

SMALL = SimulateSettings(
    frame_size=32, frames_per_scan=60, probe_diameter_px=8.0, photons_per_frame=1e5
)


def test_scan_geometry_metadata_and_truth_are_consistent():
    scan = simulate_scan(SMALL, 5, np.random.default_rng(9))
    wavelength = 6.62607015e-34 * 299_792_458.0 / (8800 * 1.602176634e-19)
    pixel = wavelength * 2.0 / (32 * 75e-6)
    assert scan.truth.pixel_m == pytest.approx((pixel, pixel), rel=1e-12)
    assert scan.metadata.geometry.object_pixel_m == pytest.approx((pixel, pixel), rel=1e-12)
    assert (
        scan.metadata.scan_id == "scan0005_particles" and scan.metadata.sample_family == "particles"
    )
    assert scan.truth.center_m == (0.0, 0.0)
    assert scan.frames.shape == (60, 32, 32) and scan.frames.dtype == np.uint32
    assert scan.positions_m.shape == (60, 2) and scan.probe.shape == (32, 32)
    assert np.abs(scan.truth.values).max() <= 1 + FLOAT32_UNIT_SLACK
    # Step = step_fraction * probe diameter: neighbours about that far apart.
    nearest = cKDTree(scan.positions_m).query(scan.positions_m, k=2)[0][:, 1]
    assert np.median(nearest) == pytest.approx(0.35 * 8 * pixel, rel=0.25)
    # Every patch fits with margin: 8 px more on every side still fits.
    cut_patches(scan.truth, scan.positions_m, 32 + 16)


def test_frames_come_from_patches_cut_from_the_truth(monkeypatch):
    captured = {}

    def capture(waves):
        captured["exit_waves"] = waves
        return far_field_intensity(waves)

    monkeypatch.setattr(beamline, "far_field_intensity", capture)
    scan = simulate_scan(
        SMALL.model_copy(update={"probe": "aperture"}), 2, np.random.default_rng(10)
    )
    patches = cut_patches(scan.truth, scan.positions_m, 32)
    lit = np.abs(scan.probe) > 1e-3 * np.abs(scan.probe).max()
    np.testing.assert_allclose(
        captured["exit_waves"][:, lit] / scan.probe[lit], patches[:, lit], rtol=1e-5, atol=1e-6
    )

    # End to end: the frames are Poisson draws around the truth's expected counts.
    expected = expected_counts(
        far_field_intensity(exit_waves(scan.probe, patches)), SMALL.photons_per_frame
    )
    usable = expected > 20
    chi2 = np.mean((scan.frames[usable] - expected[usable]) ** 2 / expected[usable])
    assert chi2 == pytest.approx(1.0, abs=0.1)
