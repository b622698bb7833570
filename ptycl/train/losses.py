"""Task loss and the Dark Experience Replay terms.

All terms are means over the pixels of the illuminated support (the part of the patch the
frame carries information about, ``prep.patches.illuminated_support``; all pixels when None)
and over both channels, so their weights mean the same thing at 64², 128² and 256² frames; the phase channel is divided by pi, so amplitude (in [0, 1]) and
phase (in [-pi, pi]) differences count on comparable scales.

DER++ loss for one step (Buzzega et al., NeurIPS 2020):

    L = task(f(x), y) + alpha * distance(f(x'), z') + beta * task(f(x''), y'')

where (x', z') and (x'', y'') come from two independent draws from the store and z' is the
model's output stored when x' was first seen. For image outputs, ``alpha`` weighs a
per-pixel mean squared error between the current and the stored (amplitude, phase/pi) maps:
alpha = 1 makes a stored-output mismatch of one (amplitude unit or pi radians) at every pixel
as costly as the task loss at an error of one at every pixel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ptycl.model.ptychonn import ModelOutput

_CHANNEL_SCALE = torch.tensor([1.0, 1.0 / math.pi]).view(1, 2, 1, 1)  # amplitude, phase / pi


def _scaled(values: torch.Tensor) -> torch.Tensor:
    return values * _CHANNEL_SCALE.to(values.device, values.dtype)


def _mean_over_support(error: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    """(n,) mean of (n, 2, S, S) ``error`` over both channels and the (S, S) support."""
    if support is None:
        return error.flatten(1).mean(dim=1)
    weights = support.to(error.device, error.dtype)
    return (error * weights).flatten(1).sum(dim=1) / (2 * weights.sum())


def per_sample_task_loss(
    predicted: ModelOutput,
    labels: torch.Tensor,
    kind: Literal["mae", "mse"],
    support: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n,) task loss of each sample: MAE (PtychoNN's choice) or MSE over both channels."""
    difference = _scaled(predicted.stacked() - labels.to(predicted.amplitude.dtype))
    error = difference.abs() if kind == "mae" else difference.square()
    return _mean_over_support(error, support)


def task_loss(
    predicted: ModelOutput,
    labels: torch.Tensor,
    kind: Literal["mae", "mse"],
    support: torch.Tensor | None = None,
) -> torch.Tensor:
    return per_sample_task_loss(predicted, labels, kind, support).mean()


def der_distance(
    predicted: ModelOutput, stored_outputs: torch.Tensor, support: torch.Tensor | None = None
) -> torch.Tensor:
    """DER's output-matching term: per-pixel MSE to the outputs stored at insertion."""
    difference = _scaled(predicted.stacked() - stored_outputs.to(predicted.amplitude.dtype))
    return _mean_over_support(difference.square(), support).mean()
