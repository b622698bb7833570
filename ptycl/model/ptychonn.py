"""A PtychoNN-style encoder-decoder (Cherukara et al., APL 2020).

Design notes: docs/design.md.

``model.linear_rank`` (off by default) adds a low-rank linear path from the whole standardised
frame to each head's output, before the heads' activations. For a weakly scattering sample a
frame is, to first order, a linear function of the object's phase through a Fourier transform,
a map in which every output pixel depends on every detector pixel; local convolutions and
pooling represent it poorly and learn it slowly, a dense layer at once. Its output layers start
at zero, so at initialisation the model is the convolutional network alone (docs/regime.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ptycl.config import ModelSettings


@dataclass(frozen=True)
class ModelOutput:
    """The model's two named heads, each (n, 1, H, W)."""

    amplitude: torch.Tensor
    phase: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """(n, 2, H, W) with channels (amplitude, phase)."""
        return torch.cat([self.amplitude, self.phase], dim=1)

    @staticmethod
    def from_stacked(values: torch.Tensor) -> ModelOutput:
        return ModelOutput(amplitude=values[:, 0:1], phase=values[:, 1:2])


NORM_GROUPS = 4  # GroupNorm groups per layer (fewer where a layer has fewer channels)


def _conv_norm_relu(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    if norm == "none":
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    # No bias before the norm: the norm's own shift replaces it. A channel's bias would be
    # subtracted again with its group's mean (all of it in a one-channel group), leaving a
    # gradient that is zero but for rounding, which Adam, dividing by its size, turns into
    # steps of the full learning rate in a direction set by the summation order.
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(NORM_GROUPS, c_out), c_out),
        nn.ReLU(inplace=True),
    ]


def _double_conv(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(*_conv_norm_relu(c_in, c_out, norm), *_conv_norm_relu(c_out, c_out, norm))


def _decoder(widths: list[int], norm: str) -> nn.Sequential:
    """Mirror of the encoder: from the deepest width back to the first, one upsample per level.

    As in PtychoNN, the first decoder level keeps the bottleneck width (128 -> 128 -> 64 -> 32
    at width 32), which is where most of the parameters are.
    """
    layers: list[nn.Module] = []
    c_in = widths[-1]
    for c_out in widths[::-1]:
        layers += [
            _double_conv(c_in, c_out, norm),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        ]
        c_in = c_out
    layers.append(nn.Conv2d(widths[0], 1, 3, padding=1))
    return nn.Sequential(*layers)


class PtychoNN(nn.Module):
    def __init__(
        self,
        width: int = 32,
        depth: int = 3,
        input_size: int = 64,
        precision: str = "fp32",
        channels_last: bool = False,
        norm: str = "group",
        compile: bool = False,
        linear_rank: int = 0,
    ) -> None:
        super().__init__()
        # How the network computes (``ModelSettings``), not what it holds: checkpoints of a
        # model built with either switch load into one built without, and give its outputs.
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        if norm not in ("group", "none"):
            raise ValueError(f"norm must be group or none, not {norm!r}")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.channels_last = channels_last
        # Identity until fitted; ``input_fitted`` records whether it has been.
        self.register_buffer("input_mean", torch.zeros(1, 1, input_size, input_size))
        self.register_buffer("input_scale", torch.ones(1, 1, input_size, input_size))
        self.register_buffer("input_fitted", torch.tensor(False))
        widths = [width * 2**level for level in range(depth)]
        encoder: list[nn.Module] = []
        c_in = 1
        for c_out in widths:
            encoder += [_double_conv(c_in, c_out, norm), nn.MaxPool2d(2)]
            c_in = c_out
        self.encoder = nn.Sequential(*encoder)
        self.amplitude_head = _decoder(widths, norm)
        self.phase_head = _decoder(widths, norm)
        self.depth = depth
        self.linear_path = _LinearPath(input_size, linear_rank) if linear_rank else None
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            # The forward alone, not the module's call: hooks (the benchmarks' clocks, DDP's)
            # stay eager, and the state dict keeps its keys, so checkpoints load either way.
            self.forward = torch.compile(self.forward)

    def forward(self, frames: torch.Tensor) -> ModelOutput:
        """``frames``: (n, 1, H, W) prepared diffraction intensities, H and W divisible by 2**depth."""
        standardised = (frames - self.input_mean) / self.input_scale
        if self.channels_last:
            standardised = standardised.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            frames.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            features = self.encoder(standardised)
            amplitude, phase = self.amplitude_head(features), self.phase_head(features)
            if self.linear_path is not None:
                linear_amplitude, linear_phase = self.linear_path(standardised)
                amplitude, phase = amplitude + linear_amplitude, phase + linear_phase
        # The bounded heads in float32: bf16's 8-bit mantissa would quantise phase to ~0.01 rad.
        return ModelOutput(
            amplitude=2 * torch.sigmoid(amplitude.float()),
            phase=math.pi * torch.tanh(phase.float()),
        )

    @torch.no_grad()
    def fit_input_statistics(self, frames: torch.Tensor) -> None:
        """Fit the per-pixel standardisation on (n, 1, S, S) prepared frames.

        The spread gets a floor at its median: a pixel can be divided down to unit spread but
        never scaled up more than the typical pixel is. Why: a pixel that barely varies on the
        first scan may vary a lot on the next, and a low floor blew later scans' inputs up
        (docs/results-continual.md, "The model used to stop learning").
        """
        if frames.shape[1:] != self.input_mean.shape[1:]:
            raise ValueError(
                f"frames of shape {tuple(frames.shape[1:])} for a model built for "
                f"{tuple(self.input_mean.shape[1:])}"
            )
        if frames.shape[0] < 2:
            raise ValueError(f"a spread needs 2 frames or more, got {frames.shape[0]}")
        frames = frames.to(self.input_mean.device, torch.float32)
        spread = frames.std(dim=0, keepdim=True)
        self.input_mean.copy_(frames.mean(dim=0, keepdim=True))
        self.input_scale.copy_(spread.clamp_min(spread.median().item() + 1e-12))
        self.input_fitted.fill_(True)


class _LinearPath(nn.Module):
    """Frame (n, 1, S, S) -> rank r -> one (n, 1, S, S) term per head; see the module docstring."""

    def __init__(self, size: int, rank: int) -> None:
        super().__init__()
        self.size = size
        self.project = nn.Linear(size * size, rank)
        self.amplitude = nn.Linear(rank, size * size)
        self.phase = nn.Linear(rank, size * size)
        for layer in (self.amplitude, self.phase):  # start as the convolutional network alone
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.project(frames.reshape(len(frames), -1))
        shape = (len(frames), 1, self.size, self.size)
        return self.amplitude(projected).view(shape), self.phase(projected).view(shape)


def build_model(settings: ModelSettings, input_size: int) -> PtychoNN:
    return PtychoNN(
        width=settings.width,
        depth=settings.depth,
        input_size=input_size,
        precision=settings.precision,
        channels_last=settings.channels_last,
        norm=settings.norm,
        compile=settings.compile,
        linear_rank=settings.linear_rank,
    )


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
