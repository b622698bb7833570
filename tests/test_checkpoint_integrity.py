"""Checkpoint integrity: the last K kept, each checked by SHA-256; a damaged newest one is skipped.

The file-level tests save small states with ``save_checkpoint`` / ``RunCheckpoints`` and damage
the newest in the ways a disk or a filesystem can (cut at a random offset, bytes flipped, file
gone, manifest torn); the end-to-end test damages the newest checkpoint of a run stopped mid-scan
and checks that the resume falls back to the previous one and ends bit for bit where an
uninterrupted run does (the guarantee of test_train_continual's resume test).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycl.config import load_config
from ptycl.errors import CheckpointError, ConfigError
from ptycl.lifecycle.checkpoint import (
    LATEST,
    LOCK,
    RunCheckpoints,
    load_checkpoint,
    save_checkpoint,
)
from ptycl.parallel import Distributed
from ptycl.rehearsal import select
from ptycl.train.run import run_continual
from tests.conftest import tiny_config
from tests.helpers_report import evaluated, read_matrices

SINGLE = Distributed.single(torch.device("cpu"))


@pytest.fixture(autouse=True, scope="module")
def steady_threads():
    """One torch thread throughout. Numba's OpenMP layer sets the process's OpenMP thread count
    to NUMBA_NUM_THREADS when it starts (the store's first reservoir insertion): started in the
    middle of a run, it would change torch's thread count, hence its summation order, between
    the steps of a run and the same steps after a resume. So start it first."""
    select.reservoir_slots(0, 1, np.zeros(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_seen() -> Iterator[list[str]]:
    """The checkpoint module's warnings, by a handler of its own: an in-process CLI run earlier
    in the session may have stopped propagation to the root logger that caplog listens on."""
    logger = logging.getLogger("ptycl.lifecycle.checkpoint")
    handler = _Messages()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def tiny_state(n: int) -> dict:
    return {"n": n, "weights": torch.full((64, 64), float(n))}


def manifests(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("checkpoint-*.json"))


def damage(path: Path, how: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":  # a torn write: the file cut at a random offset
        path.write_bytes(data[: rng.randrange(len(data))])
    elif how == "flip":  # bit rot: a few bytes somewhere changed, the size unchanged
        for offset in rng.sample(range(len(data)), 3):
            data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "delete":
        path.unlink()
    elif how == "garbage":  # a manifest that is not JSON at all
        path.write_bytes(bytes(rng.randrange(256) for _ in range(len(data))))
    else:
        raise ValueError(how)


def test_keeps_the_last_k_each_with_a_manifest_and_latest_names_the_newest(tmp_path):
    for n in range(1, 6):
        save_checkpoint(tmp_path, tiny_state(n), keep=3)
    assert manifests(tmp_path) == [f"checkpoint-00000{n}.json" for n in (3, 4, 5)]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pt")) == [
        f"checkpoint-00000{n}.pt" for n in (3, 4, 5)
    ]
    assert (tmp_path / LATEST).readlink() == Path("checkpoint-000005.pt")
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    manifest = json.loads((tmp_path / "checkpoint-000005.json").read_text())
    entry = manifest["files"]["checkpoint-000005.pt"]
    assert entry["size"] == (tmp_path / "checkpoint-000005.pt").stat().st_size
    assert len(entry["sha256"]) == 64
    assert load_checkpoint(tmp_path)["n"] == 5


@pytest.mark.parametrize(
    ("target", "how", "reason"),
    [
        ("pt", "truncate", "is truncated"),
        ("pt", "flip", "fails its SHA-256 check"),
        ("pt", "delete", "is missing"),
        ("json", "truncate", "unreadable manifest"),
        ("json", "garbage", "unreadable manifest"),
        ("json", "delete", None),  # never committed: the previous one is simply the newest
    ],
)
def test_a_damaged_newest_checkpoint_is_skipped_with_one_warning(
    tmp_path, warnings_seen, target, how, reason
):
    for n in range(1, 4):
        save_checkpoint(tmp_path, tiny_state(n))
    damage(tmp_path / f"checkpoint-000003.{target}", how, random.Random(f"{target}-{how}"))
    assert load_checkpoint(tmp_path)["n"] == 2
    messages = warnings_seen
    if reason is None:
        assert messages == []
        return
    skipped, resumed = messages
    assert skipped.startswith(f"skipping checkpoint {tmp_path / 'checkpoint-000003.pt'}: ")
    assert reason in skipped and "\n" not in skipped
    assert resumed == f"resuming from the earlier checkpoint {tmp_path / 'checkpoint-000002.pt'}"


def test_no_intact_checkpoint_is_an_error_naming_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path)
    for n in range(1, 3):
        save_checkpoint(tmp_path, tiny_state(n))
    for n in range(1, 3):
        damage(tmp_path / f"checkpoint-00000{n}.pt", "flip", random.Random(n))
    with pytest.raises(CheckpointError, match=r"none of its 2 checkpoint\(s\) is intact"):
        load_checkpoint(tmp_path)


def test_a_latest_pt_without_manifest_says_which_ptycl_wrote_it(tmp_path):
    torch.save(tiny_state(1), tmp_path / LATEST)
    with pytest.raises(CheckpointError, match="no checkpoint manifest beside it"):
        load_checkpoint(tmp_path)


def test_leftovers_of_a_killed_writer_are_removed_and_numbers_never_reused(tmp_path):
    for n in range(1, 3):
        save_checkpoint(tmp_path, tiny_state(n))
    # Killed after renaming checkpoint 3 into place, before its manifest; and in mid-write.
    shutil.copy(tmp_path / "checkpoint-000002.pt", tmp_path / "checkpoint-000003.pt")
    (tmp_path / ".checkpoint-000004.pt.12345.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".store-step9-rank1of2.pt.777.tmp").write_bytes(b"half a shard")
    assert load_checkpoint(tmp_path)["n"] == 2
    save_checkpoint(tmp_path, tiny_state(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000001.json",
        "checkpoint-000001.pt",
        "checkpoint-000002.json",
        "checkpoint-000002.pt",
        "checkpoint-000004.json",
        "checkpoint-000004.pt",
        LATEST,
    ]
    assert load_checkpoint(tmp_path)["n"] == 4


def test_a_fresh_run_replaces_the_checkpoints_of_an_earlier_run(tmp_path):
    """A run that did not resume must never fall back into another run's checkpoints; one that
    resumed keeps its own history as fallbacks."""
    state = {"trainer": {"store": None}}
    earlier = RunCheckpoints(tmp_path, SINGLE, "ptycl train", keep=3)
    for n in range(3):
        earlier.save({**state, "n": n})
    assert len(manifests(tmp_path)) == 3
    fresh = RunCheckpoints(tmp_path, SINGLE, "ptycl train", keep=3)
    fresh.save({**state, "n": 10})
    assert manifests(tmp_path) == ["checkpoint-000004.json"]
    fresh.save({**state, "n": 11})
    continued = RunCheckpoints(tmp_path, SINGLE, "ptycl train", keep=3)
    loaded, shards = continued.load()
    assert loaded["n"] == 11 and loaded["ranks"] == 1 and shards is None
    continued.save({**state, "n": 12})
    assert manifests(tmp_path) == [f"checkpoint-00000{n}.json" for n in (4, 5, 6)]


def test_keep_checkpoints_must_be_positive():
    assert load_config(None, []).train.keep_checkpoints == 3
    with pytest.raises(
        ConfigError, match=r"train\.keep_checkpoints: Input should be greater than 0"
    ):
        load_config(None, ["train.keep_checkpoints=0"])


# -- a real run ------------------------------------------------------------------------------

# Checkpoints every 3 steps and at each scan's end: a run stopped at step 8 keeps, newest first,
# step 8 (scan 1 step 2), step 6 (scan 0 evaluated, scan 1 to start), step 6 (scan 0 trained).
EVERY_3 = ("train.strategy=derpp", "train.checkpoint_every_steps=3", "train.keep_checkpoints=3")


@pytest.fixture(scope="module")
def straight_run(tiny_scans, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("straight")
    run_continual(tiny_config(tiny_scans, output, *EVERY_3))
    return output


@pytest.fixture(scope="module")
def stopped_run(tiny_scans, tmp_path_factory) -> Path:
    """The run stopped by --max-steps 8, in the middle of scan 1: its checkpoint directory."""
    output = tmp_path_factory.mktemp("stopped")
    run_continual(tiny_config(tiny_scans, output, *EVERY_3), max_steps=8)
    checkpoints = output / "checkpoints"
    assert manifests(checkpoints) == [f"checkpoint-00000{n}.json" for n in (2, 3, 4)]
    assert load_checkpoint(checkpoints)["trainer"]["position"] == [1, 2, 8]
    return checkpoints


def test_the_run_keeps_k_checkpoints(straight_run):
    checkpoints = straight_run / "checkpoints"
    # 6 + 3 checkpoints (every 3 steps, and at each scan's end), the last 3 kept.
    assert manifests(checkpoints) == [f"checkpoint-00000{n}.json" for n in (7, 8, 9)]
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        [*manifests(checkpoints), *(f"checkpoint-00000{n}.pt" for n in (7, 8, 9)), LATEST, LOCK]
    )
    assert load_checkpoint(checkpoints)["trainer"]["position"] == [3, 0, 18]


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_resume_falls_back_past_a_damaged_checkpoint_and_ends_as_an_uninterrupted_run(
    straight_run, stopped_run, tiny_scans, tmp_path, warnings_seen, how
):
    shutil.copytree(stopped_run, tmp_path / "checkpoints")
    newest = tmp_path / "checkpoints" / "checkpoint-000004.pt"
    damage(newest, how, random.Random(how))
    resumed = run_continual(tiny_config(tiny_scans, tmp_path, *EVERY_3), resume=True)
    skipped = warnings_seen[0]
    assert skipped.startswith(f"skipping checkpoint {newest}: ")
    # It resumed at step 6 (scan 1 from its start) and trained scan 1's first 2 steps again.
    assert [c["steps"] for c in resumed.costs] == [6, 6, 6]
    straight = json.loads((straight_run / "metrics.json").read_text())
    assert [c["samples"] for c in resumed.costs] == [c["samples"] for c in straight["costs"]]
    for metric, matrix in read_matrices(straight_run).items():  # to float32 summation order
        flat = evaluated(matrix)
        flat_resumed = evaluated(resumed.matrix(metric))
        assert flat_resumed == pytest.approx(flat, rel=1e-6), metric
    a = load_checkpoint(straight_run / "checkpoints")["trainer"]
    b = load_checkpoint(tmp_path / "checkpoints")["trainer"]
    assert a["position"] == b["position"] == [3, 0, 18]
    for name, tensor in a["model"].items():  # bit for bit
        assert torch.equal(tensor, b["model"][name]), name
    assert torch.equal(a["store"]["held"]["inputs"], b["store"]["held"]["inputs"])


def test_a_checkpoint_of_the_other_command_is_refused_in_one_line(tmp_path):
    """`ptycl watch --resume` on a `ptycl train` run's directory (a batch script resumes
    whenever latest.pt exists) names both commands instead of failing on a missing key."""
    RunCheckpoints(tmp_path, SINGLE, "ptycl train").save({"trainer": {"store": None}})
    with pytest.raises(
        CheckpointError, match="saved by `ptycl train`, and this is `ptycl watch`"
    ) as err:
        RunCheckpoints(tmp_path, SINGLE, "ptycl watch").load()
    assert "\n" not in str(err.value) and "run.output_dir" in str(err.value)
    state, _ = RunCheckpoints(tmp_path, SINGLE, "ptycl train").load()
    assert state["command"] == "ptycl train"


def test_a_latest_link_that_cannot_be_made_is_one_line_and_the_checkpoint_still_loads(
    tmp_path, monkeypatch
):
    """An inode quota on scratch: the link fails after the manifest is committed."""
    import errno
    import os

    save_checkpoint(tmp_path, tiny_state(1))

    def quota(*args):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "symlink", quota)
    with pytest.raises(CheckpointError, match=r"latest\.pt: cannot link .*quota") as err:
        save_checkpoint(tmp_path, tiny_state(2))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob(".latest.pt.*"))  # no temporary left behind
    assert load_checkpoint(tmp_path)["n"] == 2  # committed by its manifest


def test_a_second_run_on_the_same_directory_is_refused_while_the_first_lives(tmp_path):
    """Two jobs given one run.output_dir: the second would prune the first's checkpoints. It
    stops in one line naming the holder; once the holder is killed, its lock is gone."""
    import subprocess
    import sys

    holds = (
        "import sys, torch; from pathlib import Path\n"
        "from ptycl.lifecycle.checkpoint import RunCheckpoints\n"
        "from ptycl.parallel import Distributed\n"
        "lock = RunCheckpoints(Path(sys.argv[1]), Distributed.single(torch.device('cpu')),"
        " 'ptycl watch')\n"
        "print('holding', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holds, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(
            CheckpointError, match=rf"in use by ptycl watch \(pid {holder.pid} on "
        ) as err:
            RunCheckpoints(tmp_path, SINGLE, "ptycl train")
        assert "\n" not in str(err.value) and "another run.output_dir" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    RunCheckpoints(tmp_path, SINGLE, "ptycl train").save({"trainer": {"store": None}, "n": 1})
    assert load_checkpoint(tmp_path)["n"] == 1
