"""The model's optional linear path (model.linear_rank): starts as the plain network, learns a
linear map from the whole frame that the convolutional network alone learns slowly."""

from __future__ import annotations

import math

import torch

from ptycl.model.ptychonn import PtychoNN, parameter_count

S = 32  # frame size: the model takes any multiple of 2**depth (prep asks 64 and up)
SCORED = 64  # frames the fit is scored on


def test_the_linear_path_starts_silent_and_counts_its_parameters():
    torch.manual_seed(0)
    plain = PtychoNN(width=4, depth=2, input_size=S)
    torch.manual_seed(0)
    with_path = PtychoNN(width=4, depth=2, input_size=S, linear_rank=8)
    frames = torch.rand(3, 1, S, S)
    plain_out, path_out = plain(frames), with_path(frames)
    torch.testing.assert_close(path_out.stacked(), plain_out.stacked())
    size = S * S
    assert parameter_count(with_path) - parameter_count(plain) == (size * 8 + 8) + 2 * (
        8 * size + size
    )


def _global_linear_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames whose phase label is a fixed random linear function of ALL their pixels."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, 1, S, S, generator=generator)
    mixing = torch.randn(4, S * S, generator=generator) / S
    codes = frames.flatten(1) @ mixing.T  # (n, 4): each depends on every pixel
    patterns = torch.randn(4, S * S, generator=torch.Generator().manual_seed(99)) * 0.1
    phase = (codes @ patterns).view(n, 1, S, S).clamp(-1.5, 1.5)
    return frames, torch.cat([torch.ones_like(phase), phase], dim=1)


def _fit(model: PtychoNN, frames: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        rows = torch.arange(step * 16, step * 16 + 16) % len(frames)
        loss = (model(frames[rows]).stacked() - labels[rows]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return (model(frames[:SCORED]).phase - labels[:SCORED, 1:]).abs().mean().item()


def test_a_global_linear_map_is_learned_with_the_path_and_not_without():
    frames, labels = _global_linear_task(256, seed=1)
    constant = (labels[:SCORED, 1:] - labels[:, 1:].median(dim=0).values).abs().mean().item()
    torch.manual_seed(0)
    plain = _fit(PtychoNN(width=4, depth=2, input_size=S), frames, labels, steps=100)
    torch.manual_seed(0)
    linear = _fit(
        PtychoNN(width=4, depth=2, input_size=S, linear_rank=8), frames, labels, steps=100
    )
    assert math.isfinite(plain) and math.isfinite(linear)
    # The plain network stays near the constant patch; the path takes most of the error away.
    assert linear < 0.5 * constant and plain > 0.9 * constant
