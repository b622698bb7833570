"""Watch mode under MPI: the same ``ptycl watch`` command on two ranks, stopped mid-scan by
SIGTERM to mpiexec and resumed on two ranks, trains every segment exactly once."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptycl.stream.ledger import Ledger
from ptycl.train.checkpoint import load_checkpoint
from tests.test_watch import (
    FRAMES,
    MPIEXEC,
    SEGMENT,
    _env,
    _owed_steps,
    _read_json,
    _write_config,
)

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.slow,
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')"),
]


def _start(scans: Path, config: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [
                *(MPIEXEC, "-n", "2", sys.executable, "-m", "ptycl", "watch", str(scans)),
                *("-c", str(config), *extra),
            ],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _wait(what: str, condition, job: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if job.poll() is not None:
            pytest.fail(f"job exited ({job.returncode}) waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def _stop(job: subprocess.Popen, log: Path) -> None:
    job.send_signal(signal.SIGTERM)  # mpiexec passes it on to every rank
    try:
        assert job.wait(timeout=90) == 0, log.read_text()
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"the job did not stop on SIGTERM:\n{log.read_text()}")


def test_two_ranks_watch_stop_and_resume_exactly(tmp_path: Path) -> None:
    scans, output = tmp_path / "beamline", tmp_path / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"
    status = output / "status.json"
    simulate = [
        f"simulate.out_dir={scans}",
        "simulate.n_scans=2",
        "simulate.families=[manhattan, siemens]",
        f"simulate.frames_per_scan={FRAMES}",
        "simulate.frame_size=64",
        "simulate.frame_rate_hz=20",
        "simulate.labels=in_scan",
    ]
    job = _start(scans, config, log)
    writer = None
    try:
        _wait("the watcher to start", status.exists, job, log)
        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ptycl",
                "simulate",
                *[a for s in simulate for a in ("--set", s)],
            ],
            env=_env(),
            stderr=subprocess.PIPE,
        )
        _wait(
            "a trained segment",
            lambda: (
                (_read_json(status) or {}).get("counters", {}).get("frames_trained", 0) >= SEGMENT
            ),
            job,
            log,
        )
        _stop(job, log)
        job = _start(scans, config, log, "--resume")
        expected = {"scan0000_manhattan.h5": "trained", "scan0001_siemens.h5": "trained"}

        def all_trained() -> bool:
            ledger = _read_json(output / "ledger.json") or {"scans": []}
            return {s["name"]: s["state"] for s in ledger["scans"]} == expected

        _wait("both scans trained", all_trained, job, log)
        _stop(job, log)
        _, writer_err = writer.communicate(timeout=60)
        assert writer.returncode == 0, writer_err.decode()
    finally:
        if job.poll() is None:
            job.kill()
        if writer is not None and writer.poll() is None:
            writer.kill()

    ledger = Ledger.read_json(output / "ledger.json")
    for record in ledger.scans.values():
        assert record.frames_trained == FRAMES and record.steps == _owed_steps(FRAMES)
    state = load_checkpoint(output / "checkpoints")
    assert state["ranks"] == 2 and state["trainer"]["position"][2] == 2 * _owed_steps(FRAMES)
    step = state["trainer"]["position"][2]
    for rank in (0, 1):  # each rank's store shard, named by the checkpoint's step
        assert (output / "checkpoints" / f"store-step{step}-rank{rank}.pt").exists()
    metrics = json.loads((output / "metrics.json").read_text())
    phase = metrics["matrices"]["phase_mae"]
    assert all(math.isfinite(v) for i, row in enumerate(phase) for v in row[: i + 1])
    text = log.read_text()
    assert text.count("resumed:") == 1 and "Traceback" not in text
