"""Watch mode under MPI: the same ``ptycl watch`` command on two ranks, stopped mid-scan by
SIGTERM to mpiexec and resumed on two ranks, trains every segment exactly once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.stream.ledger import Ledger
from tests.helpers_report import read_matrices
from tests.test_watch import (
    FRAMES,
    MPIEXEC,
    SEGMENT,
    _kill_leftovers,
    _owed_steps,
    _read_json,
    _start_simulator,
    _start_watcher,
    _stop,
    _wait_for,
    _write_config,
)

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.slow,
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')"),
]


def test_two_ranks_watch_stop_and_resume_exactly(tmp_path: Path) -> None:
    scans, output = tmp_path / "beamline", tmp_path / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"
    status = output / "status.json"
    job = _start_watcher(scans, config, log=log, ranks=2)
    writer = None
    try:
        _wait_for("the watcher to start", status.exists, job, log, 120)
        writer = _start_simulator(
            scans, "simulate.n_scans=2", "simulate.families=[manhattan, siemens]"
        )
        _wait_for(
            "a trained segment",
            lambda: (
                (_read_json(status) or {}).get("counters", {}).get("frames_trained", 0) >= SEGMENT
            ),
            job,
            log,
            120,
        )
        _stop(job, log)
        job = _start_watcher(scans, config, "--resume", log=log, ranks=2)
        expected = {"scan0000_manhattan.h5": "trained", "scan0001_siemens.h5": "trained"}

        def all_trained() -> bool:
            ledger = _read_json(output / "ledger.json") or {"scans": []}
            return {s["name"]: s["state"] for s in ledger["scans"]} == expected

        _wait_for("both scans trained", all_trained, job, log, 120)
        _stop(job, log)
        _, writer_err = writer.communicate(timeout=60)
        assert writer.returncode == 0, writer_err.decode()
    finally:
        _kill_leftovers(job, writer)

    ledger = Ledger.read_json(output / "ledger.json")
    for record in ledger.scans.values():
        assert record.frames_trained == FRAMES and record.steps == _owed_steps(FRAMES)
    state = load_checkpoint(output / "checkpoints")
    assert state["ranks"] == 2 and state["trainer"]["position"][2] == 2 * _owed_steps(FRAMES)
    step = state["trainer"]["position"][2]
    for rank in (0, 1):  # each rank's store shard, named by the checkpoint's step
        assert (output / "checkpoints" / f"store-step{step}-rank{rank}of2.pt").exists()
    phase = read_matrices(output)["phase_mae"]
    assert all(math.isfinite(v) for i, row in enumerate(phase) for v in row[: i + 1])
    text = log.read_text()
    assert text.count("resumed:") == 1 and "Traceback" not in text
