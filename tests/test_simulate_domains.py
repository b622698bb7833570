"""The domain stream: each domain a sample family seen through its own probe, unseen scans per
domain, and no near-flat scan (configs/continual-domains.yaml)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from ptycl.config import ConfigError, load_config
from ptycl.io.source import open_scan
from ptycl.prep.patches import cut_patches, illuminated_support
from ptycl.simulate.beamline import constant_patch_phase_error, simulate_scan
from ptycl.simulate.run import simulate_scans, unseen_scan_paths

SCENARIO = Path(__file__).parents[1] / "configs" / "continual-domains.yaml"
# Scans of the scenario, shortened: the domains and the physics are the shipped ones.
SHORT = ["simulate.frames_per_scan=150"]


def _scenario(*overrides: str):
    return load_config(SCENARIO, [*SHORT, *overrides]).simulate


def test_families_alone_make_one_domain_each_with_the_run_probe():
    settings = load_config(
        None, ["simulate.families=[siemens, texture]", "simulate.probe=aperture"]
    ).simulate
    assert [(d.family, d.probe) for d in settings.all_domains()] == [
        ("siemens", "aperture"),
        ("texture", "aperture"),
    ]
    assert settings.domain(3).family == "texture"


def test_a_domain_probe_as_wide_as_the_frame_is_refused():
    with pytest.raises(ConfigError, match=r"probe_diameter_px 64\.0 must be smaller"):
        load_config(None, ["simulate.domains=[{family: siemens, probe_diameter_px: 64}]"])


def test_scenario_domains_never_recur_and_change_the_probe_every_time():
    settings = _scenario()
    domains = settings.all_domains()
    assert settings.n_scans == len(domains) >= 4
    assert len({d.family for d in domains}) == len(domains)
    for before, after in itertools.pairwise(domains):
        assert (before.probe, before.probe_diameter_px) != (after.probe, after.probe_diameter_px)


@pytest.fixture(scope="module")
def scenario_scans():
    settings = _scenario()
    return settings, [
        simulate_scan(settings, i, np.random.default_rng([settings.seed, i]))
        for i in range(settings.n_scans)
    ]


def test_scenario_scans_carry_their_domain_probe(scenario_scans):
    settings, scans = scenario_scans
    for scan, domain in zip(scans, settings.all_domains(), strict=False):
        assert scan.metadata.sample_family == domain.family
        assert scan.metadata.attrs["probe"] == domain.probe
        assert scan.probe.shape == (64, 64)
        assert np.sum(np.abs(scan.probe) ** 2) == pytest.approx(1.0, rel=1e-5)
        # About the requested diameter: most of the power inside it, nearly all within 1.5x.
        yy, xx = np.indices(scan.probe.shape) - 32
        power, radius = np.abs(scan.probe) ** 2, np.hypot(yy, xx)
        assert power[radius <= domain.probe_diameter_px / 2].sum() > 0.6
        assert power[radius <= 0.75 * domain.probe_diameter_px].sum() > 0.8
    # Consecutive probes are different fields: their normalised overlap is well below 1.
    for a, b in itertools.pairwise(scans):
        overlap = abs(np.vdot(a.probe, b.probe))
        assert overlap < 0.8, (a.metadata.scan_id, b.metadata.scan_id, overlap)


def test_support_radius_follows_each_scan_probe(scenario_scans):
    settings, scans = scenario_scans
    radii = []
    for scan, domain in zip(scans, settings.all_domains(), strict=False):
        pixel = scan.truth.pixel_m
        support = illuminated_support(scan.probe, pixel, pixel, 64)
        radius = np.sqrt(support.sum() / np.pi)
        # 90% of the power: sqrt(0.9) of the radius for a uniform disc (an aperture), further
        # out for a zone plate's rings, but within 0.8 of the nominal diameter.
        assert 0.4 * domain.probe_diameter_px <= radius <= 0.8 * domain.probe_diameter_px
        radii.append((domain.probe_diameter_px, radius))
    same_kind = {}
    for (diameter, radius), domain in zip(radii, settings.all_domains(), strict=False):
        same_kind.setdefault(domain.probe, []).append((diameter, radius))
    for pairs in same_kind.values():  # a wider probe of the same kind lights a wider disc
        pairs.sort()
        assert all(r1 < r2 for (_, r1), (_, r2) in itertools.pairwise(pairs))


def test_forward_model_conserves_the_transmitted_power(scenario_scans):
    settings, scans = scenario_scans
    for scan in scans:
        patches = cut_patches(scan.truth, scan.positions_m, 64)
        transmitted = np.sum(np.abs(scan.probe * patches) ** 2, axis=(1, 2))
        counts = scan.frames.sum(axis=(1, 2), dtype=np.float64)
        expected = settings.photons_per_frame * transmitted
        # Poisson: the total of a frame is within a few sigma of its expectation.
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_no_scenario_scan_is_near_flat(scenario_scans):
    settings, scans = scenario_scans
    for scan, _domain in zip(scans, settings.all_domains(), strict=False):
        support = illuminated_support(scan.probe, scan.truth.pixel_m, scan.truth.pixel_m, 64)
        phases = np.angle(cut_patches(scan.truth, scan.positions_m, 64))
        error = constant_patch_phase_error(phases, support)
        assert error >= settings.min_phase_contrast_rad >= 0.05, scan.metadata.scan_id


def test_a_flat_family_threshold_redraws_then_refuses():
    settings = _scenario("simulate.min_phase_contrast_rad=5.0", "simulate.frames_per_scan=20")
    with pytest.raises(ValueError, match="no object of 20 draws reached"):
        simulate_scan(settings, 0, np.random.default_rng(0))


def test_unseen_scans_are_written_per_domain_and_differ_from_the_stream(tmp_path):
    settings = _scenario(
        "simulate.frames_per_scan=40", "simulate.n_scans=2", f"simulate.out_dir={tmp_path}"
    )
    paths = simulate_scans(settings)
    unseen = unseen_scan_paths(settings)
    assert len(paths) == 2 and [len(p) for p in unseen] == [1] * len(settings.all_domains())
    assert unseen[0][0].parent == tmp_path / "unseen"
    with open_scan(paths[0]) as trained, open_scan(unseen[0][0]) as held:
        assert held.metadata.sample_family == trained.metadata.sample_family == "manhattan"
        assert held.metadata.scan_id == "domain00_manhattan_0"
        assert held.n_committed() == 40
        assert not np.array_equal(held.label().values, trained.label().values)
