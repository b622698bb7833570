"""A scan written by one process is followed by a reader in another, frame by frame.

Every frame the writer process stores has all pixels equal to its index + 1, so a frame read
before its data landed (zeros) or while it was being written (mixed values) is caught.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ptycl.errors import ScanError
from ptycl.io.source import open_scan
from tests.helpers_scans import pattern_position, stream_pattern_scan

HELPER = Path(__file__).with_name("helpers_scans.py")
REPO = HELPER.parent.parent


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_reader_follows_writer_in_another_process(tmp_path: Path, suffix: str) -> None:
    n_frames, size = 60, 16
    path = tmp_path / f"scan0001_stream{suffix}"
    writer = subprocess.Popen(
        [
            sys.executable,
            str(HELPER),
            "write",
            str(path),
            "--frames",
            str(n_frames),
            "--rate-hz",
            "60",
            "--size",
            str(size),
        ],
        env=_env(),
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(path)
        seen: list[int] = []
        with open_scan(path, expected_frame_shape=(size, size)) as source:
            # The file appears only once readable, and well before the writer is done.
            assert not source.is_complete()
            for batch in source.batches(7, follow=True, poll_interval_s=0.01, stall_timeout_s=20):
                per_frame_min = batch.frames.min(axis=(1, 2))
                per_frame_max = batch.frames.max(axis=(1, 2))
                np.testing.assert_array_equal(per_frame_min, batch.indices + 1)
                np.testing.assert_array_equal(per_frame_max, batch.indices + 1)
                expected = np.array([pattern_position(i) for i in batch.indices])
                np.testing.assert_array_equal(batch.positions_m, expected)
                seen.extend(batch.indices.tolist())
            assert source.is_complete()
        assert seen == list(range(n_frames))
    finally:
        _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 0, stderr.decode()


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_follow_raises_when_the_writer_stalls(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"scan0002_dead{suffix}"
    stream_pattern_scan(path, n_frames=9, rate_hz=1e6, size=8, complete=False)
    with open_scan(path) as source:
        assert source.n_committed() == 9 and not source.is_complete()
        batches = source.batches(4, follow=True, poll_interval_s=0.01, stall_timeout_s=0.3)
        assert [len(next(batches)), len(next(batches))] == [4, 4]
        with pytest.raises(ScanError, match="stalled") as err:
            next(batches)
        assert str(path) in str(err.value)
        # Without follow, the committed frames of an unfinished scan are all readable.
        assert sum(len(b) for b in source.batches(4)) == 9


def test_ptycl_simulate_in_real_time_is_followed_to_the_end(tmp_path: Path) -> None:
    pytest.importorskip("ptycl.simulate.beamline")
    n_frames = 30
    out_dir = tmp_path / "sim"
    settings = [
        f"simulate.out_dir={out_dir}",
        "simulate.n_scans=1",
        f"simulate.frames_per_scan={n_frames}",
        "simulate.frame_size=32",
        "simulate.frame_rate_hz=30",
        "simulate.format=zarr",
        "simulate.labels=separate",
    ]
    command = [
        sys.executable,
        "-m",
        "ptycl",
        "simulate",
        *[arg for s in settings for arg in ("--set", s)],
    ]
    writer = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE)
    path = out_dir / "scan0000_manhattan.zarr"
    try:
        _wait_for(path)
        with open_scan(path, expected_frame_shape=(32, 32)) as source:
            assert not source.is_complete()
            assert source.label() is None  # a separate label follows the last frame
            streamed = list(
                source.batches(4, follow=True, poll_interval_s=0.01, stall_timeout_s=30)
            )
    finally:
        _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 0, stderr.decode()
    assert "wrote 1 scan(s), 30 frames" in stderr.decode()
    indices = np.concatenate([b.indices for b in streamed])
    np.testing.assert_array_equal(indices, np.arange(n_frames))
    frames = np.concatenate([b.frames for b in streamed])
    assert (frames.sum(axis=(1, 2)) > 0).all()  # no frame read before its data landed
    with open_scan(path) as finished:
        final = finished.read(range(n_frames))
        assert finished.label() is not None
    np.testing.assert_array_equal(frames, final.frames)
    np.testing.assert_array_equal(
        np.concatenate([b.positions_m for b in streamed]), final.positions_m
    )
