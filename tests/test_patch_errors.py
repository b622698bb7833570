"""Offset-free phase error, the constant-patch baseline and skill, the spatial holdout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptycl.eval.image_metrics import object_errors, remove_phase_plane
from ptycl.eval.patch_errors import (
    constant_patch,
    constant_patch_errors,
    offset_free_phase_error,
    patch_errors,
    skill,
)
from ptycl.io.records import ObjectImage
from ptycl.prep.holdout import spatial_holdout, support_diameter_m
from ptycl.simulate.scan_path import fermat_spiral

S = 16


def _disc(size: int = S, radius: float = 5.0) -> torch.Tensor:
    offsets = torch.arange(size) - size // 2
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _phases(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, S, S), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_constant_phase_offset_costs_nothing_even_across_the_wrap():
    true = _phases()
    support = _disc()
    offsets = torch.tensor([0.0, 0.3, -1.2, 3.0, math.pi - 0.01])[:, None, None]
    error = offset_free_phase_error(true + offsets, true, support)
    assert error.numpy() == pytest.approx(0.0, abs=1e-6)
    # the raw (labelled) error is the offset itself, wrapped
    raw = patch_errors(
        torch.stack([torch.ones_like(true), true + offsets], 1),
        torch.stack([torch.ones_like(true), true], 1),
        support,
    )
    assert raw.phase_mae == pytest.approx(float(offsets.abs().mean()), rel=1e-5)
    assert raw.phase_offset_free_mae == pytest.approx(0.0, abs=1e-6)


def test_a_phase_ramp_leaves_its_spread_about_the_mean():
    true = torch.zeros((1, S, S))
    support = _disc()
    slope = 0.05  # rad per pixel along x, small enough that nothing wraps
    ramp = slope * (torch.arange(S) - S // 2).float().expand(S, S)
    error = offset_free_phase_error((true + ramp)[None, 0:1].squeeze(0), true, support)
    on_disc = ramp[support].double()
    expected = (on_disc - on_disc.mean()).abs().mean().item()
    assert error.item() == pytest.approx(expected, rel=1e-6)
    # plus an offset: the same error
    shifted = offset_free_phase_error((true + ramp + 2.0), true, support)
    assert shifted.item() == pytest.approx(expected, rel=1e-6)


def test_only_the_support_is_scored():
    true = _phases()
    predicted = true.clone()
    support = _disc()
    predicted[:, ~support] += 1.5  # wrong outside the probe's disc only
    assert offset_free_phase_error(predicted, true, support).numpy() == pytest.approx(0, abs=1e-6)


def test_the_constant_patch_is_the_per_pixel_median_and_has_skill_zero():
    labels = torch.stack([torch.rand((7, S, S)) + 0.5, _phases(7, seed=1)], 1)
    support = _disc()
    constant = constant_patch(labels)
    assert torch.equal(constant, labels.median(dim=0).values)
    baseline = constant_patch_errors(labels, support)
    expected_amplitude = (labels[:, 0] - constant[0]).abs()[:, support].mean().item()
    assert baseline.amplitude_mae == pytest.approx(expected_amplitude, rel=1e-6)
    # the constant patch predicted scores skill 0, the truth skill 1, twice the error -1
    assert skill(baseline.amplitude_mae, baseline.amplitude_mae) == 0.0
    assert skill(0.0, baseline.amplitude_mae) == 1.0
    assert skill(2 * baseline.amplitude_mae, baseline.amplitude_mae) == pytest.approx(-1.0)
    assert math.isnan(skill(0.1, 0.0))
    # any other constant patch does worse on amplitude (the median minimises the MAE per pixel)
    other = patch_errors((constant + 0.05).expand_as(labels), labels, support)
    assert other.amplitude_mae > baseline.amplitude_mae


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_held_out_frame_lies_within_a_probe_diameter_of_a_training_frame(seed):
    step = 0.35e-6
    positions = fermat_spiral(400, step) + np.random.default_rng(seed).normal(0, 0.02e-6, (400, 2))
    diameter = step / 0.35
    split = spatial_holdout(positions, 0.15, diameter, seed)
    assert len(split.holdout_rows) == 60
    rows = np.concatenate([split.train_rows, split.holdout_rows, split.guard_rows])
    assert sorted(rows.tolist()) == list(range(400))  # every row once
    distances = np.linalg.norm(
        positions[split.train_rows][:, None] - positions[split.holdout_rows][None], axis=2
    )
    assert distances.min() >= diameter
    assert len(split.train_rows) > 200  # the guard band takes a band, not the scan
    # a region: the held-out frames are contiguous along the drawn direction, so their
    # mutual distances are small next to the scan's extent
    extent = np.ptp(positions, axis=0).max()
    held = positions[split.holdout_rows]
    assert np.ptp(held @ np.linalg.svd(held - held.mean(0))[2][0]) < extent
    # the same seed, the same split; another, another region
    again = spatial_holdout(positions, 0.15, diameter, seed)
    assert np.array_equal(again.holdout_rows, split.holdout_rows)
    other = spatial_holdout(positions, 0.15, diameter, seed + 10)
    assert not np.array_equal(other.holdout_rows, split.holdout_rows)


def test_nothing_held_out_trains_on_every_frame():
    split = spatial_holdout(fermat_spiral(20, 1e-7), 0.0, 1e-6, 0)
    assert split.train_rows.tolist() == list(range(20))
    assert len(split.holdout_rows) == len(split.guard_rows) == 0


def test_support_diameter():
    support = _disc(radius=5.0).numpy()
    assert support_diameter_m(support, (1e-8, 1e-8)) == pytest.approx(11e-8)


def test_a_stitched_object_is_scored_after_its_phase_offset_and_ramp():
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(0.5, 1.0, (40, 50))
    phase = rng.uniform(-1.0, 1.0, (40, 50))
    truth = ObjectImage((amplitude * np.exp(1j * phase)).astype(np.complex64), (1e-8, 1e-8), (0, 0))
    y, x = np.indices(phase.shape)
    plane = 2.9 + 0.03 * y - 0.02 * x  # an offset near pi and a ramp
    moved = ObjectImage(
        (amplitude * np.exp(1j * (phase + plane))).astype(np.complex64), (1e-8, 1e-8), (0, 0)
    )
    covered = np.zeros(phase.shape, bool)
    covered[5:35, 8:45] = True
    errors = object_errors(moved, truth, covered)
    assert errors.phase_mae == pytest.approx(0.0, abs=1e-5)
    assert errors.phase_ssim == pytest.approx(1.0, abs=1e-6)
    # a phase error that is not a plane stays
    bumped = phase + plane + np.where(y < 20, 0.2, 0.0)
    worse = ObjectImage(
        (amplitude * np.exp(1j * bumped)).astype(np.complex64), (1e-8, 1e-8), (0, 0)
    )
    assert object_errors(worse, truth, covered).phase_mae > 0.03  # a plane takes part of a step
    assert np.allclose(remove_phase_plane(phase + plane, phase, covered), phase, atol=1e-9)
