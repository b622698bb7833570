"""What a run says it will write, against what it wrote."""

from __future__ import annotations

from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.train.disk_use import estimate_disk_use
from ptycl.train.run import run_continual
from ptycl.train.trainer import ContinualTrainer
from tests.conftest import tiny_config


def test_the_estimate_bounds_the_checkpoints_and_counts_them(tiny_scans, tmp_path) -> None:
    config = tiny_config(
        tiny_scans,
        tmp_path,
        "train.strategy=derpp",
        "train.checkpoint_every_steps=4",
        "train.keep_checkpoints=2",
    )
    estimate = estimate_disk_use(config, ContinualTrainer.build(config), scans=3)
    assert estimate.checkpoints_written == 3 + 18 // 4  # one per scan end, one per 4 steps
    run_continual(config)
    checkpoints = tmp_path / "checkpoints"
    kept = sorted(checkpoints.glob("checkpoint-*.pt"))
    assert len(kept) == estimate.checkpoints_kept == 2
    # Numbers are never reused: the newest one's is the count written.
    assert kept[-1].name == f"checkpoint-{estimate.checkpoints_written:06d}.pt"
    newest = load_checkpoint(checkpoints)["trainer"]
    assert newest["store"]["seen"] >= newest["store"]["capacity"]  # the store is full
    # An upper bound: the store's rows are compressed where that pays.
    assert kept[-1].stat().st_size <= estimate.checkpoint_bytes
    weights = sum(t.numel() * t.element_size() for t in newest["model"].values())
    assert estimate.checkpoint_bytes > 3 * weights  # the model, its Adam moments and the store
