"""DER / DER++ loss terms against hand computations."""

import math

import pytest
import torch

from ptycl.model.ptychonn import ModelOutput, PtychoNN, parameter_count
from ptycl.train.losses import der_distance, per_sample_task_loss, task_loss


def _output(amplitude: float, phase: float, n: int = 2, size: int = 4) -> ModelOutput:
    return ModelOutput(
        torch.full((n, 1, size, size), amplitude), torch.full((n, 1, size, size), phase)
    )


def test_task_loss_mae_by_hand():
    predicted = _output(0.5, 1.0)
    labels = torch.zeros(2, 2, 4, 4)
    labels[:, 0] = 0.25  # amplitude error 0.25
    labels[:, 1] = 1.0 - math.pi / 2  # phase error pi/2 -> 0.5 after dividing by pi
    expected = (0.25 + 0.5) / 2  # mean over the two channels
    assert task_loss(predicted, labels, "mae").item() == pytest.approx(expected, rel=1e-6)
    assert per_sample_task_loss(predicted, labels, "mae").shape == (2,)


def test_task_loss_mse_by_hand():
    predicted = _output(0.5, 0.0)
    labels = torch.zeros(2, 2, 4, 4)
    labels[:, 1] = math.pi  # phase error -pi -> -1 after scaling, squared 1
    expected = (0.25 + 1.0) / 2
    assert task_loss(predicted, labels, "mse").item() == pytest.approx(expected, rel=1e-6)


def test_der_distance_is_the_task_metric_to_stored_outputs():
    """alpha's normalisation (ptycl.train.losses): the distance to the stored outputs is the
    task loss's own per-pixel metric, so alpha = 1 weighs a mismatch like a label error."""
    predicted = _output(0.2, 0.5 * math.pi)
    stored = torch.zeros(2, 2, 4, 4)
    stored[:, 0] = 0.6  # amplitude difference -0.4
    stored[:, 1] = 0.0  # phase difference pi/2 -> 0.5 after dividing by pi
    assert der_distance(predicted, stored, "mae").item() == pytest.approx((0.4 + 0.5) / 2, rel=1e-6)
    assert der_distance(predicted, stored, "mse").item() == pytest.approx(
        (0.16 + 0.25) / 2, rel=1e-6
    )
    # per-pixel means: the same value at a larger image size
    big = _output(0.2, 0.5 * math.pi, size=16)
    stored_big = torch.zeros(2, 2, 16, 16)
    stored_big[:, 0] = 0.6
    assert der_distance(big, stored_big, "mae").item() == pytest.approx((0.4 + 0.5) / 2, rel=1e-6)


def test_der_distance_pulls_as_hard_as_the_task_loss_at_small_mismatches():
    """The defect the metric choice fixes: beside an MAE task loss, a squared distance's
    gradient shrinks with the mismatch (2 x 0.02 here, 25x weaker); the task metric's does not."""
    stored = torch.zeros(1, 2, 4, 4)
    gradients = {}
    for kind in ("mae", "mse"):
        phase = torch.full((1, 1, 4, 4), 0.02 * math.pi, requires_grad=True)
        der_distance(ModelOutput(torch.zeros(1, 1, 4, 4), phase), stored, kind).backward()
        gradients[kind] = phase.grad.abs().sum().item() * math.pi  # per unit of phase / pi
    assert gradients["mae"] == pytest.approx(0.5, rel=1e-5)  # 1 per pixel, over 2 channels
    assert gradients["mse"] == pytest.approx(0.5 * 2 * 0.02, rel=1e-4)


def test_per_sample_losses_differ_by_sample():
    predicted = ModelOutput(
        torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]), torch.zeros(2, 1, 4, 4)
    )
    labels = torch.zeros(2, 2, 4, 4)
    losses = per_sample_task_loss(predicted, labels, "mae")
    assert losses.tolist() == pytest.approx([0.0, 0.5])


def test_model_outputs_are_bounded_and_named():
    torch.manual_seed(0)
    model = PtychoNN(width=8, depth=3)
    out = model(torch.randn(3, 1, 64, 64) * 10)
    assert out.amplitude.shape == out.phase.shape == (3, 1, 64, 64)
    assert 0.0 <= out.amplitude.min() and out.amplitude.max() <= 2.0
    assert out.phase.abs().max() <= math.pi
    assert torch.equal(out.stacked()[:, 0:1], out.amplitude)


def test_outputs_depend_on_the_frame_from_the_start():
    """GroupNorm keeps the frame's signal alive through the layers; without it, an untrained
    network gives nearly the same patch for every frame (see ptycl.model.ptychonn). Spread of
    the outputs across 16 random frames, per pixel, measured: 0.39 rad with, 3e-6 without."""
    frames = torch.randn(16, 1, 64, 64)
    spread = {}
    for norm in ("group", "none"):
        torch.manual_seed(0)
        out = PtychoNN(width=8, depth=3, norm=norm)(frames)
        spread[norm] = out.phase.std(dim=0).mean().item()
    assert spread["group"] > 0.05
    assert spread["none"] < 1e-3


def test_amplitude_one_is_where_the_head_is_steepest():
    """A fully transmitting pixel (amplitude 1) is the head's zero logit, where 2 * sigmoid is
    steepest (slope 0.5), not the saturated end of a plain sigmoid, which never reaches it."""
    model = PtychoNN(width=8, depth=3)
    last = model.amplitude_head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    frames = torch.randn(2, 1, 64, 64)
    out = model(frames)
    assert torch.equal(out.amplitude, torch.ones_like(out.amplitude))
    out.amplitude.sum().backward()
    assert last.bias.grad.item() == pytest.approx(0.5 * out.amplitude.numel())


def test_default_width_has_ptychonn_size():
    assert 0.7e6 <= parameter_count(PtychoNN(width=32, depth=3)) <= 1.3e6


def test_losses_count_only_the_support_pixels():
    labels = torch.zeros(2, 2, 4, 4)
    support = torch.zeros(4, 4, dtype=torch.bool)
    support[1:3, 1:3] = True
    inside = _output(0.5, 0.0)
    outside_too = ModelOutput(inside.amplitude.clone(), inside.phase.clone())
    outside_too.amplitude[..., 0, :] = 1.0  # errors only outside the support
    for loss in (
        lambda p: task_loss(p, labels, "mae", support),
        lambda p: der_distance(p, labels, "mae", support),
    ):
        assert loss(outside_too).item() == pytest.approx(loss(inside).item(), rel=1e-6)
    assert task_loss(inside, labels, "mae", support).item() == pytest.approx(0.25, rel=1e-6)


def test_input_standardisation_is_fitted_once_and_saved_with_the_weights():
    generator = torch.Generator().manual_seed(0)
    frames = 3.0 + 0.1 * torch.randn(200, 1, 16, 16, generator=generator)
    frames[:, :, :8] *= 40.0  # a bright half, like the probe's own diffraction
    frames[:, :, -2:, -2:] = 0.0  # a corner that never sees a photon on the fitted scan
    model = PtychoNN(width=4, depth=2, input_size=16)
    assert not model.input_fitted
    model.fit_input_statistics(frames)
    standardised = (frames - model.input_mean) / model.input_scale
    assert standardised.mean(dim=0).abs().max().item() < 1e-4
    spread = standardised.std(dim=0)[0]
    # Pixels above the median spread (the bright half) come out at unit spread; the others
    # are divided by the median spread (0.1 here), never by less.
    assert spread[:8].sub(1).abs().max().item() < 1e-4
    dark = spread[8:-2]  # the rows without the corner
    assert 0.6 < dark.min().item() and dark.max().item() < 1 + 1e-4
    median = frames.std(dim=0).median().item()
    assert model.input_scale[0, 0, -1, -1].item() == pytest.approx(median, rel=1e-5)
    # So a count in that corner on a later scan stands at 1 / median (about 10), not 1e12.
    assert model.input_scale.min().item() == pytest.approx(median, rel=1e-5)
    copy = PtychoNN(width=4, depth=2, input_size=16)
    copy.load_state_dict(model.state_dict())
    assert copy.input_fitted and torch.equal(copy.input_scale, model.input_scale)
    with pytest.raises(ValueError, match="built for"):
        model.fit_input_statistics(frames[:, :, :8, :8])


def test_a_samples_outputs_do_not_depend_on_what_shares_its_batch():
    """What lets the trainer put DER++'s two replay draws through one forward: GroupNorm
    normalises each sample alone (BatchNorm would mix them)."""
    torch.manual_seed(0)
    model = PtychoNN(width=8, depth=3)
    frames = torch.rand(64, 1, 64, 64)
    alone, together = model(frames[:32]).stacked(), model(frames).stacked()[:32]
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


def test_each_sample_may_be_scored_on_its_own_scans_support():
    labels = torch.zeros(2, 2, 4, 4)
    small = torch.zeros(4, 4, dtype=torch.bool)
    small[1:3, 1:3] = True
    large = torch.ones(4, 4, dtype=torch.bool)
    predicted = _output(0.5, 0.0)
    predicted.amplitude[1, ..., 0, :] = 1.0  # sample 1 is wrong on the first row
    per_sample = per_sample_task_loss(predicted, labels, "mae", torch.stack([small, large]))
    alone = [
        per_sample_task_loss(predicted, labels, "mae", s)[k] for k, s in enumerate((small, large))
    ]
    assert per_sample.tolist() == pytest.approx([a.item() for a in alone], rel=1e-6)
    assert per_sample[1] > per_sample_task_loss(predicted, labels, "mae", small)[1]
