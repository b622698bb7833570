"""Shared fixtures: tiny simulated scan sequences, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptycl.config import Config, load_config
from ptycl.simulate.run import simulate_scans

# A run small enough for a 2-core CI machine: 3 scans of 96 frames (a tenth held out as a
# region, a guard band around it) at 32x32... the model needs
# 2**depth | input size, and the prep supports 64 and up, so frames stay 64x64 with a tiny model.
TINY = [
    "simulate.n_scans=3",
    "simulate.frames_per_scan=96",
    "simulate.families=[manhattan, siemens, particles]",
    "model.width=4",
    "model.depth=2",
    "train.steps_per_scan=6",
    "train.batch_size=8",
    "train.replay_batch_size=4",
    "train.store.capacity_samples=40",
    "train.checkpoint_every_steps=0",
    "train.keep_checkpoints=3",  # the tests that count checkpoints were written for 3
    "prep.holdout_fraction=0.1",
    "run.log_level=WARNING",
]


@pytest.fixture(scope="session")
def tiny_scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labelled HDF5 scans from three sample families."""
    directory = tmp_path_factory.mktemp("tiny-scans")
    config = load_config(None, [*TINY, f"simulate.out_dir={directory}"])
    simulate_scans(config.simulate)
    return directory


def tiny_config(scans: Path, output_dir: Path, *overrides: str) -> Config:
    return load_config(
        None, [*TINY, f"scans=[{scans}]", f"run.output_dir={output_dir}", *overrides]
    )
