"""Crash and resume for real: ``ptycl train`` SIGKILLed at random moments, resumed until done.

A tiny DER++ run (3 scans of 6 steps) with a checkpoint at every step runs in a process group
of its own: one process, or ``mpiexec -n 2`` with its proxy and ranks. Several times (3, and 2
for MPI), once it has committed 2 to 5 new checkpoints and a random delay has passed (a seeded
random), the whole group is killed with SIGKILL, wherever it is (mid-step, mid-write of a
checkpoint or a shard, mid-evaluation), and the run is started again with ``--resume``; the last
start runs to the end. Then:

- after each kill every checkpoint left is whole (sizes and SHA-256 as its manifest records,
  checked here independently of ptycl.lifecycle.checkpoint); at the end only the last
  ``train.keep_checkpoints`` are on disk, with the shards they name, and no temporary file;
- metrics.json holds one row per scan with the scans seen so far, the steps add up to scans x
  steps_per_scan, and the costs in samples are those of the uninterrupted run;
- the final model (and store) equals, bit for bit, that of an uninterrupted run of the same
  config (in this process for one rank, under mpiexec for two): what ``--resume`` guarantees
  on the same number of ranks (test_train_continual, test_train_distributed); the evaluations
  to float32 summation order (rel 1e-6).

Before its last start the 2-rank run also gets the rank-1 store shard of its newest checkpoint
damaged: the resume must skip that checkpoint with a warning and still end bit for bit.

A third run kills one rank only (rank 1, then rank 0), as a node failure or the kernel's OOM
killer would: the surviving rank is blocked in a collective, so MPI (hydra) must end the whole
job within seconds rather than leave it hanging for the rest of its allocation; the resume
then ends bit for bit as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycl.config import dump_config, load_config
from ptycl.lifecycle.checkpoint import LATEST, LOCK, load_checkpoint
from ptycl.rehearsal import select
from ptycl.train.run import run_continual
from tests.conftest import tiny_config
from tests.helpers_report import evaluated, read_matrices

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
SCANS, STEPS = 3, 6  # tiny_config's scans and steps per scan
SURVIVORS_END_WITHIN_S = 30  # after one rank is killed, for the rest of the job to end
KEEP = 3
OVERRIDES = (
    "train.strategy=derpp",
    "train.checkpoint_every_steps=1",
    f"train.keep_checkpoints={KEEP}",
    "run.log_level=INFO",
)
ENV = {
    **os.environ,
    # One thread for torch and for Numba alike: Numba's OpenMP layer resets the process's
    # OpenMP thread count to NUMBA_NUM_THREADS when the store first inserts, which would change
    # torch's summation order after the first step of every start, and so the weights.
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",  # MPICH ranks sleep, not spin, while they wait
}


def write_config(scans: Path, output: Path) -> Path:
    path = output.parent / f"{output.name}.yaml"
    path.write_text(dump_config(tiny_config(scans, output, *OVERRIDES)))
    return path


def train_command(config: Path, ranks: int) -> list[str]:
    launcher = [] if ranks == 1 else [MPIEXEC, "-n", str(ranks)]
    return [*launcher, sys.executable, "-m", "ptycl", "train", "-c", str(config)]


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: mpiexec, the proxy, the ranks
        )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (hydra's proxy puts each rank in a process group of its own,
    so the ranks are found by parentage, not by group)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # "pid (command) state ppid ...": the command may hold spaces, not ")"
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def rank_pid(process: subprocess.Popen, rank: int) -> int:
    """The pid of MPI rank ``rank`` of the job ``process`` launched (hydra sets PMI_RANK)."""
    for pid in descendants(process.pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if f"PMI_RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no rank {rank} under mpiexec {process.pid}")


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the whole process group and wait until none of it is left."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "processes of the killed group still run"
        time.sleep(0.05)


def newest(checkpoints: Path) -> int:
    return max(
        (int(p.stem.split("-")[1]) for p in checkpoints.glob("checkpoint-*.json")), default=0
    )


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def assert_all_intact(checkpoints: Path) -> set[str]:
    """Every manifest's files have the recorded size and SHA-256; the names of all of them."""
    named = set()
    for manifest in checkpoints.glob("checkpoint-*.json"):
        named.add(manifest.name)
        for name, entry in json.loads(manifest.read_text())["files"].items():
            data = (checkpoints / name).read_bytes()
            assert len(data) == entry["size"], f"{name} of {manifest.name}: torn"
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name}: corrupted"
            named.add(name)
    return named


def wait_for_checkpoints(
    checkpoints: Path, wanted: int, process: subprocess.Popen, log: Path, deadline: float
) -> float:
    """Wait until checkpoint ``wanted`` is committed; the seconds per checkpoint seen meanwhile
    (the pace of this run on this machine)."""
    before = newest(checkpoints)
    first: tuple[float, int] | None = None  # when the first new checkpoint was seen, its number
    while (number := newest(checkpoints)) < wanted:
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                kill_group(process)
            pytest.fail(f"ended ({process.returncode}) before the kill:\n{log_tail(log)}")
        if first is None and number > before:
            first = (time.monotonic(), number)
        time.sleep(0.02)
    if first is None:  # all of them committed within one poll
        return 0.02
    return (time.monotonic() - first[0]) / max(1, number - first[1])


def kill_one_rank(process: subprocess.Popen, rank: int) -> None:
    """SIGKILL one rank; the job must then end by itself, promptly, with an error, and leave
    none of its processes (proxy, the other rank) behind."""
    job = descendants(process.pid)
    os.kill(rank_pid(process, rank), signal.SIGKILL)
    try:
        process.wait(timeout=SURVIVORS_END_WITHIN_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        pytest.fail(f"rank {rank} killed: the other rank still ran {SURVIVORS_END_WITHIN_S} s on")
    assert process.returncode != 0
    deadline = time.monotonic() + 20
    while alive := [pid for pid in job if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, f"processes of the job still run: {alive}"
        time.sleep(0.05)


def run_with_kills(
    command: list[str],
    checkpoints: Path,
    log: Path,
    kills: int,
    rng: random.Random,
    before_last_start: Callable[[], None] = lambda: None,
    kill: Callable[[subprocess.Popen, int], None] = lambda process, _: kill_group(process),
) -> None:
    """Start ``command``; ``kills`` times, once this start has committed 2 to 5 new checkpoints
    and then a random delay of up to two checkpoints' time (0.5 s at most) has passed, SIGKILL it
    and start it again with --resume. The last start runs to the end.

    The delay scales with the pace so that the kills land anywhere in a step or a checkpoint
    on a slow machine and a fast one alike, and no start gets to the end of the run (21
    checkpoints: 18 steps and 3 scan ends)."""
    deadline = time.monotonic() + 200
    extra: list[str] = []
    for attempt in range(kills):
        wanted = newest(checkpoints) + rng.randint(2, 5)
        process = start([*command, *extra], log)
        pace = wait_for_checkpoints(checkpoints, wanted, process, log, deadline)
        time.sleep(rng.uniform(0, min(0.5, 2 * pace)))
        kill(process, attempt)
        assert_all_intact(checkpoints)  # a kill never damages a committed checkpoint
        assert (checkpoints / LATEST).resolve().exists()
        extra = ["--resume"]
    before_last_start()
    finish(start([*command, *extra], log), log, deadline)


def finish(process: subprocess.Popen, log: Path, deadline: float) -> None:
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(process)
        pytest.fail(f"did not finish:\n{log_tail(log)}")
    assert process.returncode == 0, log_tail(log)


@pytest.fixture(scope="module")
def one_thread():
    """This process computes as the started ones do (ENV): one torch thread, with Numba's OpenMP
    layer started first, as its start would otherwise reset torch's thread count."""
    select.reservoir_slots(0, 1, np.zeros(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def uninterrupted(scans: Path, root: Path, ranks: int) -> Path:
    """The same config run straight through: in this process (what ``ptycl train`` runs, less
    a process start) for one rank, under mpiexec for several."""
    output = root / "straight"
    config = write_config(scans, output)
    if ranks == 1:
        run_continual(load_config(config))
        return output
    log = root / "straight.log"
    finish(start(train_command(config, ranks), log), log, time.monotonic() + 150)
    return output


def assert_same_end(straight: Path, crashed: Path, ranks: int) -> None:
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((crashed / "metrics.json").read_text())
    assert b["scan_ids"] == a["scan_ids"] and len(b["scan_ids"]) == SCANS
    assert [c["steps"] for c in b["costs"]] == [STEPS] * SCANS
    assert [c["samples"] for c in b["costs"]] == [c["samples"] for c in a["costs"]]
    matrices_a, matrices_b = read_matrices(straight), read_matrices(crashed)
    for metric, matrix in matrices_b.items():
        # One row per scan, after it: the scans seen so far evaluated, the later ones not.
        assert len(matrix) == SCANS, metric
        for i, row in enumerate(matrix):
            assert all(math.isfinite(v) for v in row[: i + 1]), metric
            assert np.isnan(row[i + 1 :]).all(), metric
        flat_a = evaluated(matrices_a[metric])
        flat_b = evaluated(matrix)
        assert flat_b == pytest.approx(flat_a, rel=1e-6), metric
    assert len((crashed / "R_phase_mae.csv").read_text().splitlines()) == SCANS + 1

    checkpoints = crashed / "checkpoints"
    end_a = load_checkpoint(straight / "checkpoints")
    end_b = load_checkpoint(checkpoints)
    assert end_b["trainer"]["position"] == [SCANS, 0, SCANS * STEPS]
    assert end_b["ranks"] == ranks
    for name, tensor in end_a["trainer"]["model"].items():
        assert torch.equal(tensor, end_b["trainer"]["model"][name]), name
    if ranks == 1:  # the store travels inside the checkpoint
        held_a, held_b = end_a["trainer"]["store"]["held"], end_b["trainer"]["store"]["held"]
        assert torch.equal(held_a["inputs"], held_b["inputs"])
    for rank in range(ranks if ranks > 1 else 0):  # each rank's shard beside it
        name = f"store-step{SCANS * STEPS}-rank{rank}of{ranks}.pt"
        shard_a = torch.load(straight / "checkpoints" / name, weights_only=True)
        shard_b = torch.load(checkpoints / name, weights_only=True)
        assert torch.equal(shard_a["rows"], shard_b["rows"]), name
        assert shard_a["table"]["seen"] == shard_b["table"]["seen"], name

    # Only the last KEEP checkpoints, the shards they name, the link to the newest.
    assert len(list(checkpoints.glob("checkpoint-*.json"))) == KEEP
    assert {p.name for p in checkpoints.iterdir()} == assert_all_intact(checkpoints) | {
        LATEST,
        LOCK,
    }
    assert (checkpoints / LATEST).readlink() == Path(f"checkpoint-{newest(checkpoints):06d}.pt")


def test_killed_three_times_then_resumed_ends_as_an_uninterrupted_run(
    tiny_scans, tmp_path, one_thread
):
    straight = uninterrupted(tiny_scans, tmp_path, ranks=1)
    crashed, log = tmp_path / "crashed", tmp_path / "crashed.log"
    command = train_command(write_config(tiny_scans, crashed), ranks=1)
    run_with_kills(command, crashed / "checkpoints", log, kills=3, rng=random.Random(20240611))
    assert log.read_text().count("resumed at scan") == 3, log_tail(log)
    assert_same_end(straight, crashed, ranks=1)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')")
def test_mpi_job_killed_whole_then_resumed_ends_as_an_uninterrupted_run(tiny_scans, tmp_path):
    straight = uninterrupted(tiny_scans, tmp_path, ranks=2)
    crashed, log = tmp_path / "crashed", tmp_path / "crashed.log"
    checkpoints = crashed / "checkpoints"
    command = train_command(write_config(tiny_scans, crashed), ranks=2)
    rng = random.Random(1989)
    damaged: list[str] = []

    def damage_newest_shard() -> None:
        number = newest(checkpoints)
        files = json.loads((checkpoints / f"checkpoint-{number:06d}.json").read_text())["files"]
        shard = checkpoints / next(name for name in files if name.endswith("-rank1of2.pt"))
        data = bytearray(shard.read_bytes())
        for offset in rng.sample(range(len(data)), 3):
            data[offset] ^= 0xFF
        shard.write_bytes(bytes(data))
        damaged.append(f"skipping checkpoint {checkpoints / f'checkpoint-{number:06d}.pt'}: ")
        damaged.append(f"{shard.name} fails its SHA-256 check (corrupted)")

    run_with_kills(command, checkpoints, log, 2, rng, before_last_start=damage_newest_shard)
    text = log.read_text()
    assert text.count("resumed at scan") == 2, log_tail(log)
    assert "".join(damaged) in text and "resuming from the earlier checkpoint" in text, text[-4000:]
    assert_same_end(straight, crashed, ranks=2)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')")
def test_mpi_job_with_one_rank_killed_ends_then_resumes_as_an_uninterrupted_run(
    tiny_scans, tmp_path
):
    straight = uninterrupted(tiny_scans, tmp_path, ranks=2)
    crashed, log = tmp_path / "crashed", tmp_path / "crashed.log"
    command = train_command(write_config(tiny_scans, crashed), ranks=2)
    run_with_kills(
        command,
        crashed / "checkpoints",
        log,
        kills=2,
        rng=random.Random(7),
        kill=lambda process, attempt: kill_one_rank(process, rank=1 - attempt % 2),
    )
    assert log.read_text().count("resumed at scan") == 2, log_tail(log)
    assert_same_end(straight, crashed, ranks=2)
