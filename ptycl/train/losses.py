"""Task loss and the Dark Experience Replay terms.

All terms are means over the pixels of the illuminated support (the part of the patch the
frame carries information about, ``prep.patches.illuminated_support``; all pixels when None)
and over both channels, so their weights mean the same thing at 64², 128² and 256² frames.
The phase channel is divided by pi, so amplitude (in (0, 2)) and phase (in [-pi, pi])
differences count on comparable scales.

DER++ loss for one step (Buzzega et al., NeurIPS 2020):

    L = task(f(x), y) + alpha * distance(f(x'), z') + beta * task(f(x''), y'')

where (x', z') and (x'', y'') come from two independent draws from the store and z' is the
model's output stored when x' was first seen.

How ``alpha`` is normalised for image outputs: the distance to the stored outputs is the task
loss's own per-pixel metric (absolute difference under ``loss: mae``, squared under ``mse``) on
the same (amplitude, phase/pi) scale, averaged over the same pixels. So ``alpha = 1`` makes a
mismatch to the stored output cost exactly what the same mismatch to a label costs, at every
size of error, and alpha and beta weigh the two replay terms on one scale.

Why not the squared error of DER's logit matching whatever the task loss: next to an MAE task
loss, whose gradient has size 1 per pixel, a squared error's gradient is 2 x the mismatch, and
the mismatches to a model's own recent outputs are small (0.01-0.05 on this scale). The alpha
term then pulled 20-100x less than its weight says, and DER trained like plain fine-tuning:
in the continual scenario (configs/continual-64.yaml) DER ended at 0.187 rad, incremental at
0.186.
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
    """(n,) mean of (n, 2, S, S) ``error`` over both channels and the support: one (S, S)
    for every sample, or (n, S, S), each sample its own (its scan's probe)."""
    if support is None:
        return error.flatten(1).mean(dim=1)
    weights = support.to(error.device, error.dtype)
    if weights.ndim == 2:
        return (error * weights).flatten(1).sum(dim=1) / (2 * weights.sum())
    return (error * weights[:, None]).flatten(1).sum(dim=1) / (2 * weights.flatten(1).sum(dim=1))


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
    predicted: ModelOutput,
    stored_outputs: torch.Tensor,
    kind: Literal["mae", "mse"],
    support: torch.Tensor | None = None,
) -> torch.Tensor:
    """DER's output-matching term: the task loss's metric to the outputs stored at insertion."""
    return task_loss(predicted, stored_outputs, kind, support)
