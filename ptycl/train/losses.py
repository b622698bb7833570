"""Task loss and the Dark Experience Replay terms.

Design notes: docs/design.md.
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
