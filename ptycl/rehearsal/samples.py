"""The record a rehearsal store holds per sample and hands back on a draw."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReplaySamples:
    """n samples, all tensors on one device.

    ``outputs`` are the model's outputs for ``inputs`` at the time the sample was offered,
    taken before that step's optimiser update (Dark Experience Replay's "logits"; for this
    regression model, the bounded amplitude and phase maps).
    """

    inputs: torch.Tensor  # (n, 1, H, W) prepared diffraction frames
    labels: torch.Tensor  # (n, 2, H, W) amplitude, phase
    outputs: torch.Tensor  # (n, 2, H, W) amplitude, phase predicted at insertion
    scan_index: torch.Tensor  # (n,) int64, position of the scan in the stream
    step: torch.Tensor  # (n,) int64, global training step at insertion

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ReplaySamples:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(
                device,
                dtype=dtype if dtype is not None and t.is_floating_point() else None,
                non_blocking=True,
            )

        return ReplaySamples(
            move(self.inputs),
            move(self.labels),
            move(self.outputs),
            move(self.scan_index),
            move(self.step),
        )

    def take(self, rows: torch.Tensor | slice) -> ReplaySamples:
        return ReplaySamples(
            self.inputs[rows],
            self.labels[rows],
            self.outputs[rows],
            self.scan_index[rows],
            self.step[rows],
        )
