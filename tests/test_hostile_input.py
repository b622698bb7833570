"""Hostile input, part two: files, names and configs that crashed, stalled or escaped ptycl.

Each test makes the input as an adversary would (real HDF5 and Zarr files, real YAML, real
symbolic links, a real full or read-only file system where the machine lets the test mount
one) and checks what ptycl must do with it instead: one line naming the file or the setting,
the stream going on, nothing read from elsewhere, no work without bound.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycl.config import load_config
from ptycl.errors import ConfigError, OutputError, ScanError, TrainingDiverged, printable
from ptycl.io import cxi
from ptycl.io.hdf5_walk import MAX_HDF5_DEPTH, MAX_HDF5_OBJECTS
from ptycl.io.records import distinct_scan_id
from ptycl.io.source import expand_scan_paths, open_scan, write_scan
from ptycl.lifecycle.stop import StopRequested, StopSignals
from ptycl.prep.frame_screen import BEYOND_RANGE, ZERO, FrameScreen
from ptycl.prep.scan_data import load_scan
from ptycl.stream.follower import ScanFollower
from ptycl.stream.quarantine import quarantine
from ptycl.train.run import run_continual
from tests.conftest import tiny_config
from tests.helpers_scans import tiny_scan

PTYCL = [sys.executable, "-m", "ptycl"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr: unstable dtypes


def ptycl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*PTYCL, *args], capture_output=True, text=True, timeout=240, env=env, **kwargs
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one line on stderr, ptycl's own, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("ptycl: error: "), lines[0]
    return lines[0]


def refused(path: Path) -> str:
    with pytest.raises(ScanError) as err:
        with open_scan(path) as source:
            list(source.batches(64))
            source.label()
    message = str(err.value)
    assert "\n" not in message and err.value.path == str(path), message
    return message


# -- files that brought the watcher down -----------------------------------------------------


@pytest.mark.slow
def test_two_copies_of_a_scan_train_apart_and_the_run_writes_its_metrics(tiny_scans, tmp_path):
    """A copy keeps the scan id it was written with: the continual metrics crashed on the
    repeated id after training both, and no metrics.json was written."""
    scans = tmp_path / "scans"
    scans.mkdir()
    first = sorted(tiny_scans.glob("*.h5"))[0]
    for name in ("a.h5", "b.h5"):
        shutil.copy(first, scans / name)
    config = tiny_config(scans, tmp_path / "run", "train.strategy=incremental")
    run_continual(config)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    original = load_scan(first, config.prep, seed=0).scan_id
    assert metrics["scan_ids"] == [original, f"{original}@b.h5"]


def test_scan_ids_are_told_apart_by_file_name_then_number():
    assert distinct_scan_id("s0", "a.h5", set()) == "s0"
    assert distinct_scan_id("s0", "b.h5", {"s0"}) == "s0@b.h5"
    assert distinct_scan_id("s0", "b.h5", {"s0", "s0@b.h5"}) == "s0@b.h5#2"


def test_a_deeply_nested_zarr_json_is_one_line_not_a_recursion_error(tmp_path: Path):
    """200 kB of brackets: Python's JSON parser recursed into a RecursionError that crashed
    ptycl info, train and watch (the watcher on every restart)."""
    for document in ("zarr.json", "entry_1/instrument_1/detector_1/data/zarr.json"):
        scan = write_scan(tmp_path / f"{len(document)}.zarr", tiny_scan(n_frames=3))
        (scan / document).write_text("[" * 100_000 + "]" * 100_000)
        assert "nests 100000 levels deep" in refused(scan)
    done = ptycl("info", str(scan))
    assert done.returncode == 1 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.count("\n") == 1 and "nests 100000 levels deep" in done.stdout


def _scan_with(path: Path, grow) -> Path:
    write_scan(path, tiny_scan(n_frames=3, frame_shape=(8, 8)))
    with h5py.File(path, "a") as f:
        grow(f)
    return path


def _nest(f: h5py.File, depth: int) -> None:
    group = f
    for _ in range(depth):
        group = group.create_group("g")


def test_hdf5_files_that_cost_without_bound_are_refused(tmp_path: Path):
    """Deep nesting walked in time quadratic in depth (1,000 levels: a minute), tens of
    thousands of objects or attributes likewise; now each is refused after a bounded walk."""
    deep = _scan_with(tmp_path / "deep.h5", lambda f: _nest(f, 3000))
    assert f"nest more than {MAX_HDF5_DEPTH} deep" in refused(deep)

    def many(f: h5py.File) -> None:
        group = f.create_group("many")
        for index in range(MAX_HDF5_OBJECTS + 10):
            group.create_dataset(f"d{index}", data=np.int8(0))

    assert f"more than {MAX_HDF5_OBJECTS} objects" in refused(_scan_with(tmp_path / "n.h5", many))

    def attributes(f: h5py.File) -> None:
        for index in range(5000):
            f.attrs[f"a{index}"] = index

    assert "5002 attributes" in refused(_scan_with(tmp_path / "attrs.h5", attributes))

    # Within the bounds a file reads as before.
    with open_scan(_scan_with(tmp_path / "fine.h5", lambda f: _nest(f, 20))) as source:
        assert source.n_committed() == 3


def test_a_variable_length_string_attribute_counts_its_real_size(tmp_path: Path):
    """Each variable-length string was counted as 8 bytes: 100 MB passed a 16 MiB cap."""

    def big(f: h5py.File) -> None:
        f.attrs["note"] = "x" * (20 << 20)

    assert "a variable-length value of 20971520 bytes" in refused(
        _scan_with(tmp_path / "s.h5", big)
    )


def test_a_gzip_bomb_is_refused_on_its_declared_size_before_decompression(tmp_path: Path):
    """Deflated zeros declaring 8192² frames: a few hundred kB read whole as 512 MB."""

    def bomb(f: h5py.File) -> None:
        del f["entry_1/instrument_1/detector_1/data"], f["entry_1/instrument_1/detector_1/mask"]
        data = f.create_dataset(
            "entry_1/instrument_1/detector_1/data",
            shape=(3, 8192, 8192),
            dtype="uint32",
            chunks=(1, 8192, 8192),
            compression="gzip",
        )
        zeros = np.zeros((8192, 8192), np.uint32)
        for index in range(3):
            data[index] = zeros

    scan = _scan_with(tmp_path / "bomb.h5", bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "refusing a decompression bomb" in refused(scan)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"peak memory grew by {grown_mb:.0f} MB: frames were decompressed"


def test_a_stop_signal_abandons_a_file_check_under_way():
    """The watcher's handler only set a flag, read between files: a check of minutes kept
    SIGTERM waiting. Inside ``abandonable()`` the same signal abandons the read at once."""
    stop = StopSignals()
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    with stop:
        try:
            timer.start()
            with pytest.raises(StopRequested), stop.abandonable():
                for _ in range(6000):  # a read that would take a minute
                    time.sleep(0.01)
            assert stop.signalled == "SIGTERM"
            os.kill(os.getpid(), signal.SIGUSR1)  # outside: the signal only sets the flag
            time.sleep(0.05)
            assert stop.signalled == "SIGUSR1"
        finally:
            timer.cancel()


# -- files read from where they should not be ------------------------------------------------


def test_scans_and_labels_that_are_symbolic_links_are_refused_before_opening(tmp_path: Path):
    elsewhere, watched = tmp_path / "elsewhere", tmp_path / "watched"
    elsewhere.mkdir(), watched.mkdir()
    scan = write_scan(elsewhere / "real.h5", tiny_scan(n_frames=3))
    group = write_scan(elsewhere / "real.zarr", tiny_scan(n_frames=3))
    fifo = elsewhere / "fifo"
    os.mkfifo(fifo)  # opened, it would block for ever: the refusal comes first
    for name, target in (("x.h5", scan), ("x.zarr", group), ("f.h5", fifo), ("p.h5", "/etc")):
        (watched / name).symlink_to(target)
        assert "a symbolic link" in refused(watched / name)
    labelled = write_scan(watched / "y.h5", tiny_scan(n_frames=3), labels="none")
    (watched / "y.label.h5").symlink_to(write_scan(elsewhere / "l.h5", tiny_scan(n_frames=3)))
    with open_scan(labelled) as source, pytest.raises(ScanError, match="a symbolic link"):
        source.label()


# -- data corrupted while it is written --------------------------------------------------------


def _corrupted_copy(tiny_scans: Path, target: Path, corrupt) -> Path:
    """A copy of a simulated, labelled scan with its frames changed in place."""
    shutil.copy(sorted(tiny_scans.glob("*.h5"))[0], target)
    with h5py.File(target, "r+") as f:
        frames = f[cxi.DETECTOR_DATA]
        frames[...] = corrupt(frames[...])
    return target


def _zero_frames(frames: np.ndarray) -> np.ndarray:
    frames[[3, 17, 18]] = 0  # whole frames of zeros inside the scan
    return frames


def test_frames_no_detector_records_are_skipped_and_counted(tiny_scans, tmp_path):
    """A scan cut while its writer went on (frames of zeros) and 4 KiB of random bytes over
    it (counts of 4.29e9) were trained on without a word."""

    def corrupt(frames: np.ndarray) -> np.ndarray:
        frames = _zero_frames(frames)
        noise = np.random.default_rng(1).integers(2**31, 2**32, 1024, dtype=np.uint64)
        frames[25].reshape(-1)[100:1124] = noise  # bytes written over it
        return frames

    path = _corrupted_copy(tiny_scans, tmp_path / "torn.h5", corrupt)
    prep = load_config(None, []).prep
    with open_scan(path) as source:
        total = source.n_committed()

    assert len(load_scan(path, prep, seed=0)) == total - 4
    follower = ScanFollower(path, prep, max_frames_per_poll=7)
    kept = 0
    while not follower.complete:
        new = follower.poll()
        kept += 0 if new is None else len(new[0])
    assert (kept, follower.frames_read) == (total - 4, total)
    assert follower.screen.skipped == {ZERO: 3, BEYOND_RANGE: 1}

    screen = FrameScreen(mask=np.ones((2, 2), bool))  # every pixel masked: nothing to judge
    assert screen.keep(np.zeros((3, 2, 2))).all()


def test_a_scan_of_nothing_but_zero_frames_is_refused(tiny_scans, tmp_path):
    path = _corrupted_copy(tiny_scans, tmp_path / "dark.h5", lambda frames: 0 * frames)
    with pytest.raises(
        ScanError,
        match=r"no usable frame: (\d+) frames no detector records skipped \(\1 all zero\)",
    ):
        load_scan(path, load_config(None, []).prep, seed=0)


# -- names, configs, messages ------------------------------------------------------------------


def test_a_newline_in_a_name_forges_no_row_and_splits_no_line(tmp_path: Path):
    watched = tmp_path / "watched"
    watched.mkdir()
    name = "evil\n2026-01-01T00:00:00\tforged.h5\tnowhere\tfine.h5"
    (watched / name).write_bytes(b"not hdf5")
    listing = tmp_path / "quarantine.tsv"
    quarantine(watched / name, "not an HDF5 file", listing)
    rows = listing.read_text().splitlines()
    assert len(rows) == 1 and rows[0].count("\t") == 3
    assert (
        rows[0].split("\t")[1] == printable(name) == name.replace("\n", "\\n").replace("\t", "\\t")
    )

    write_scan(watched / "ok\nfake: 99 frames.h5", tiny_scan(n_frames=2))
    done = ptycl("info", str(watched))
    assert done.stdout.count("\n") == 1 and "ok\\nfake: 99 frames.h5: 2 frames" in done.stdout


def test_a_directory_named_as_a_scan_is_an_error(tmp_path: Path):
    (tmp_path / "x.h5").mkdir()
    assert expand_scan_paths([tmp_path / "x.h5"]) == [tmp_path / "x.h5"]
    done = ptycl("info", str(tmp_path / "x.h5"))
    assert done.returncode == 1 and "x.h5: not a regular file" in done.stdout


def test_info_on_a_zarr_scan_with_a_refused_chunk_prints_one_line_and_no_asyncio_noise(
    tmp_path: Path,
):
    scan = write_scan(tmp_path / "s.zarr", tiny_scan(n_frames=8))
    chunk = scan / "entry_1/instrument_1/detector_1/data/c/5/0/0"
    chunk.unlink()
    chunk.symlink_to("/etc/hostname")
    done = ptycl("info", str(scan))
    assert done.returncode == 1 and done.stderr == "", done.stderr[:2000]
    assert done.stdout.count("\n") == 1 and "leads outside the scan" in done.stdout


# "Billion laughs": nine levels of nine aliases each, 9^9 strings once expanded.
BOMB = (
    "a: &a ["
    + ", ".join(["lol"] * 9)
    + "]\n"
    + "".join(
        f"{name}: &{name} [{', '.join([f'*{below}'] * 9)}]\n"
        for below, name in zip("abcdefgh", "bcdefghi", strict=True)
    )
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (BOMB + "run:\n  name: *i\n", "aliases expand it to more than 100000 values"),
        ("run:\n  seed: 1\n  seed: 2\n", "line 3: key 'seed' given twice in one mapping"),
        ("run:\n  name: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deep"),
        ("train:\n  lr: .inf\n", "train.lr: Input should be a finite number"),
        ("train:\n  alpha: .inf\n", "train.alpha: Input should be a finite number"),
        ("run:\n  seed: -1\n", "run.seed: Input should be greater than or equal to 0"),
        ("run:\n  seed: 1.0e+23\n", "run.seed: Unable to parse input string as an integer"),
        ("train:\n  batch_size: 100000000\n", "train.batch_size: Input should be less than"),
        ("model:\n  width: 100000\n", "model.width: Input should be less than or equal to 1024"),
        ("run:\n  name: [" + "x" * 100000 + "]\n", "run.name: Input should be a valid string"),
    ],
)
def test_bad_configs_are_one_short_line(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert problem in message and "\n" not in message and len(message) < 500, message[:1000]
    done = ptycl("config", "-c", str(path))
    assert problem in one_error_line(done)


def test_config_files_that_are_not_text_are_one_line(tmp_path: Path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    for path, problem in ((binary, "not a text file"), (Path("/dev/zero"), "more than 1048576")):
        assert problem in one_error_line(ptycl("config", "-c", str(path)))


def test_a_store_smaller_than_one_sample_is_refused(tiny_scans, tmp_path):
    config = tiny_config(
        tiny_scans,
        tmp_path / "run",
        "train.store.capacity_samples=null",
        "train.store.capacity_bytes=1",
    )
    with pytest.raises(ConfigError, match="capacity_bytes: 1 bytes per rank hold no sample"):
        run_continual(config)


def test_an_unwritable_output_dir_is_one_line_before_any_work(tiny_scans, tmp_path):
    (tmp_path / "a-file").write_text("")
    places = [tmp_path / "a-file", tmp_path / "a-file" / "below", Path("/proc/ptycl-run")]
    for place in places:
        with pytest.raises(OutputError, match="cannot write the run's outputs here"):
            run_continual(tiny_config(tiny_scans, place))


def test_a_loss_turning_non_finite_stops_with_one_line_and_keeps_the_checkpoint(
    tiny_scans, tmp_path
):
    config = tiny_config(tiny_scans, tmp_path / "run", "train.lr=1e30")
    with pytest.raises(TrainingDiverged, match="the loss or a gradient is not finite"):
        run_continual(config)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))  # none written after it


@pytest.mark.slow
def test_running_out_of_memory_says_so_and_what_to_lower(tiny_scans, tmp_path):
    def cap_address_space() -> None:
        limit = 6 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = ptycl(
        "train",
        "--set",
        f"scans=[{tiny_scans}]",
        "--set",
        f"run.output_dir={tmp_path / 'run'}",
        "--set",
        "model.width=1024",
        "--set",
        "model.depth=5",
        preexec_fn=cap_address_space,
    )
    line = one_error_line(done)
    assert "out of memory" in line and "train.batch_size" in line and "model.width" in line


@pytest.fixture
def small_mount(tmp_path: Path):
    """A tmpfs of 512 kB, read-write or read-only; skipped where the test may not mount."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{options},size=512k", "tmpfs", str(point)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip("cannot mount a small file system here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_simulate_onto_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(small_mount):
    full, read_only = small_mount("rw"), small_mount("ro")
    (full / "filler").write_bytes(b"\0" * (400 << 10))
    for place, problem in ((full, "MB are free"), (read_only, "Read-only file system")):
        done = ptycl(
            "simulate", "--set", f"simulate.out_dir={place}", "--set", "simulate.n_scans=1"
        )
        assert problem in one_error_line(done)
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no .partial left behind


@pytest.mark.slow
def test_the_watcher_goes_on_past_every_class_of_hostile_file(tiny_scans, tmp_path):
    """One directory holding a scan and its copy (the same scan id), a deeply nested
    zarr.json, a deeply nested HDF5 file, a scan that is a link, and a scan with frames of
    zeros: the watcher trains the three good ones, sets the others aside in one line each,
    and resumes past them."""
    from tests.test_watch import _start_watcher, _states, _stop, _wait_for, _write_config

    watched, output, log = tmp_path / "watched", tmp_path / "run", tmp_path / "watch.log"
    watched.mkdir()
    first = sorted(tiny_scans.glob("*.h5"))[0]
    for name in ("a.h5", "b.h5"):
        shutil.copy(first, watched / name)
    _corrupted_copy(tiny_scans, watched / "torn.h5", _zero_frames)
    nested = write_scan(watched / "nested.zarr", tiny_scan(n_frames=3, frame_shape=(64, 64)))
    (nested / "zarr.json").write_text("[" * 100_000 + "]" * 100_000)
    _scan_with(watched / "deep.h5", lambda f: _nest(f, 3000))
    (watched / "link.h5").symlink_to(first)
    config = _write_config(tmp_path, output)
    good, bad = ("a.h5", "b.h5", "torn.h5"), ("nested.zarr", "deep.h5", "link.h5")
    wanted = {**dict.fromkeys(good, "trained"), **dict.fromkeys(bad, "quarantined")}
    watcher = _start_watcher(watched, config, log=log)
    try:
        _wait_for("every scan settled", lambda: _states(output) == wanted, watcher, log, 300)
        _stop(watcher, log)
        watcher = _start_watcher(watched, config, "--resume", log=log)
        _wait_for("the resume", lambda: log.read_text().count("resumed:") == 1, watcher, log, 120)
        _stop(watcher, log)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    ledger = json.loads((output / "ledger.json").read_text())
    records = {r["name"]: r for r in ledger["scans"]}
    assert records["b.h5"]["scan_id"] == f"{records['a.h5']['scan_id']}@b.h5"
    assert records["torn.h5"]["frames_skipped"] == 3
    rows = (output / "quarantine.tsv").read_text().splitlines()
    assert sorted(row.split("\t")[1] for row in rows) == sorted(bad)
    assert "Traceback" not in log.read_text()
