"""Errors of predicted patches that a frame can be held to, and the baseline that gives them
a meaning.

A far-field frame is blind to a constant phase over the patch: |F{P O e^{ic}}|^2 = |F{P O}|^2.
The phase error of a patch is therefore scored *offset-free*: the circular mean of the
wrapped difference over the scored pixels is removed before the mean absolute error.

Each error is judged against the scan's *constant patch*: the per-pixel median of the
evaluated frames' labels, predicted for every frame (the median is the constant that
minimises the absolute error of each pixel, so this is the best a model that ignores its
input can do). ``skill = 1 - error / constant-patch error``: 1 is perfect, 0 is no better
than the constant patch, below 0 is worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def wrapped(angle: torch.Tensor) -> torch.Tensor:
    """``angle`` wrapped into [-pi, pi)."""
    return torch.remainder(angle + torch.pi, 2 * torch.pi) - torch.pi


def offset_free_phase_error(
    predicted: torch.Tensor, true: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """(n,) mean absolute phase error of each (S, S) patch over the (S, S) ``support``, after
    removing the patch's mean phase difference (circular mean, so an offset near pi is one
    offset, not two halves that cancel)."""
    difference = wrapped(predicted.double() - true.double())[:, support]  # (n, pixels)
    offset = torch.atan2(difference.sin().mean(dim=1), difference.cos().mean(dim=1))
    return wrapped(difference - offset[:, None]).abs().mean(dim=1)


def amplitude_error(
    predicted: torch.Tensor, true: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """(n,) mean absolute amplitude error of each (S, S) patch over the ``support``."""
    return (predicted.double() - true.double())[:, support].abs().mean(dim=1)


@dataclass(frozen=True)
class PatchErrors:
    """Mean errors over a set of patches: amplitude MAE, wrapped phase MAE (as labelled) and
    the offset-free phase MAE (radians)."""

    amplitude_mae: float
    phase_mae: float
    phase_offset_free_mae: float


def patch_errors(
    predicted: torch.Tensor, labels: torch.Tensor, support: torch.Tensor
) -> PatchErrors:
    """Errors of (n, 2, S, S) predicted patches (amplitude, phase) against their labels, over
    the (S, S) bool ``support``."""
    if predicted.shape != labels.shape or predicted.ndim != 4 or predicted.shape[1] != 2:
        raise ValueError(
            f"patch_errors needs two (n, 2, S, S) tensors of one shape, got "
            f"{tuple(predicted.shape)} and {tuple(labels.shape)}"
        )
    support = support.cpu().bool()
    predicted, labels = predicted.cpu(), labels.cpu()
    raw_phase = wrapped(predicted[:, 1].double() - labels[:, 1].double())[:, support]
    return PatchErrors(
        amplitude_mae=amplitude_error(predicted[:, 0], labels[:, 0], support).mean().item(),
        phase_mae=raw_phase.abs().mean().item(),
        phase_offset_free_mae=offset_free_phase_error(predicted[:, 1], labels[:, 1], support)
        .mean()
        .item(),
    )


def constant_patch(labels: torch.Tensor) -> torch.Tensor:
    """(2, S, S): the per-pixel median of (n, 2, S, S) label patches (amplitude, phase)."""
    if labels.ndim != 4 or len(labels) == 0:
        raise ValueError(
            f"constant_patch needs (n, 2, S, S) labels, n > 0; got {tuple(labels.shape)}"
        )
    return labels.median(dim=0).values


def constant_patch_errors(labels: torch.Tensor, support: torch.Tensor) -> PatchErrors:
    """The errors of predicting the labels' median patch for every one of them."""
    constant = constant_patch(labels).expand_as(labels)
    return patch_errors(constant, labels, support)


def skill(error: float, constant_error: float) -> float:
    """``1 - error / constant_error``; NaN when the constant patch is already perfect."""
    if not constant_error > 0:
        return float("nan")
    return 1.0 - error / constant_error
