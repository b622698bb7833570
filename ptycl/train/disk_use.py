"""What a run will write to disk, said before it starts, and what it left when it ends.

A checkpoint is the model, Adam's two moments of every weight, and the rehearsal store, whose
rows are nearly all of it once the store is full (compressed where that pays, see
``ptycl.rehearsal.packed_rows``: the estimate is the size before compression, an upper bound).
A run writes one checkpoint at every scan's end and one every ``train.checkpoint_every_steps``
steps, and keeps the newest ``train.keep_checkpoints``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptycl.config import Config
from ptycl.model.ptychonn import parameter_count
from ptycl.train.trainer import ContinualTrainer

FLOAT_BYTES = 4


@dataclass(frozen=True)
class DiskEstimate:
    checkpoint_bytes: int  # one checkpoint with the store full, before compression
    checkpoints_written: int  # over the whole run
    checkpoints_kept: int
    simulated_bytes: int  # scans to simulate (0 when the run is given its scans)

    def line(self) -> str:
        kept = self.checkpoints_kept * self.checkpoint_bytes
        text = (
            f"disk: checkpoints of up to {megabytes(self.checkpoint_bytes)} each (the "
            f"rehearsal store full, before compression), {self.checkpoints_kept} kept: up to "
            f"{megabytes(kept)}; {self.checkpoints_written} written over the run"
        )
        if self.simulated_bytes:
            text += (
                f"; simulated scans {megabytes(self.simulated_bytes)} (reused when already there)"
            )
        return text


def estimate_disk_use(config: Config, trainer: ContinualTrainer, scans: int) -> DiskEstimate:
    """The estimate for a run of ``scans`` scans with ``trainer`` (built, not yet trained)."""
    model = parameter_count(trainer.model) * FLOAT_BYTES * 3  # weights and Adam's 2 moments
    store = trainer.store
    store_bytes = 0 if store is None else store.capacity * store.sample_nbytes()
    steps = sum(trainer.steps_for_scan(i) for i in range(scans))
    every = config.train.checkpoint_every_steps
    simulated = 0
    if not config.scans:
        settings = config.simulate
        frame = settings.frame_size**2 * np.dtype(settings.detector.dtype).itemsize
        simulated = settings.n_scans * settings.frames_per_scan * frame
    return DiskEstimate(
        checkpoint_bytes=model + store_bytes,
        checkpoints_written=scans + (steps // every if every else 0),
        checkpoints_kept=config.train.keep_checkpoints,
        simulated_bytes=simulated,
    )


def bytes_under(directory: Path) -> int:
    """Bytes of the files under ``directory`` (links not followed)."""
    files = (p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
    return sum(p.lstat().st_size for p in files)


def megabytes(size: int) -> str:
    """``size`` bytes as a person reads it."""
    return f"{size / 1e6:.0f} MB" if size >= 10e6 else f"{size / 1e6:.1f} MB"
