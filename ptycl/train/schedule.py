"""Which rows each step trains on, and at what learning rate.

Both are pure functions of (run seed, scan index, step in scan), so a run resumed from a
checkpoint in the middle of a scan continues with exactly the batches and learning rates an
uninterrupted run would have used; no sampler or scheduler state needs saving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptycl.config import TrainSettings


@dataclass(frozen=True)
class ScanPlan:
    """The rows of every step of one scan, and when each row is offered to the store."""

    rows: torch.Tensor  # (steps, batch) indices into the scan's (or the pool's) training rows
    offer: torch.Tensor  # (steps, batch) bool: this is the row's last appearance in the scan

    @property
    def steps(self) -> int:
        return self.rows.shape[0]


def plan_scan(n_rows: int, steps: int, batch_size: int, seed: int, scan_index: int) -> ScanPlan:
    """Epochs of random permutations of ``n_rows``, cut into ``steps`` batches.

    Each row is offered to the rehearsal store once, at its last appearance: by then the model
    has trained on the scan, so the stored DER outputs are its considered answer for the row,
    not the untrained guess of the scan's first steps. Rows that never appear are never
    offered: they were not part of the stream the model saw.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + scan_index)
    total = steps * batch_size
    epochs = max(1, math.ceil(total / n_rows))  # a scan of no steps plans none
    stream = torch.cat([torch.randperm(n_rows, generator=generator) for _ in range(epochs)])[:total]
    last_position = torch.full((n_rows,), -1, dtype=torch.int64)
    last_position.scatter_reduce_(0, stream, torch.arange(total), reduce="amax")
    last = torch.zeros(total, dtype=torch.bool)
    last[last_position[last_position >= 0]] = True
    return ScanPlan(rows=stream.view(steps, batch_size), offer=last.view(steps, batch_size))


def learning_rate(settings: TrainSettings, step_in_scan: int, steps_in_scan: int) -> float:
    """PtychoNN-style schedules, restarted at every scan (each scan is a new task)."""
    if settings.schedule == "constant":
        return settings.lr
    progress = step_in_scan / max(1, steps_in_scan)
    if settings.schedule == "cosine":
        return settings.lr_min + 0.5 * (settings.lr - settings.lr_min) * (
            1 + math.cos(math.pi * progress)
        )
    # cyclic: triangular, two cycles per scan (PtychoNN used a cyclic rate with Adam)
    phase = (2 * progress) % 1.0
    return settings.lr_min + (settings.lr - settings.lr_min) * (1 - abs(2 * phase - 1))
