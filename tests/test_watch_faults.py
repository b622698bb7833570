"""Watch mode when things go wrong around it: the watched directory goes away and comes back,
a writer is killed mid-scan, the output disk fills up.

``ptycl watch`` runs as a subprocess, as in ``test_watch``, whose helpers these tests share.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ptycl.io.source import write_scan
from ptycl.stream.discovery import ScanDiscovery
from ptycl.stream.ledger import Ledger
from tests.helpers_scans import beamline_scan
from tests.test_watch import (
    HELPER,
    _env,
    _kill_leftovers,
    _start_watcher,
    _states,
    _stop,
    _wait_for,
    _write_config,
)


def _log_says(log: Path, text: str) -> bool:
    return text in log.read_text()


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_discovery_watches_a_directory_again_once_it_is_back(tmp_path: Path, polling: bool):
    scans = tmp_path / "scans"
    scans.mkdir()
    discovery = ScanDiscovery(scans, polling=polling, poll_interval_s=0.05)
    assert discovery.start() == []
    try:
        shutil.rmtree(scans)
        assert all(s.gone for s in discovery.poll())
        assert discovery.poll() == []  # gone: nothing to see, and no error
        scans.mkdir()
        (scans / "scan0001_early.h5").write_bytes(b"x")  # there before it is watched again
        assert [s.path.name for s in discovery.poll()] == ["scan0001_early.h5"]
        (scans / "scan0002_later.h5").write_bytes(b"y")
        deadline = time.monotonic() + 10
        names: set[str] = set()
        while "scan0002_later.h5" not in names and time.monotonic() < deadline:
            time.sleep(0.05)
            names |= {s.path.name for s in discovery.poll()}
        assert "scan0002_later.h5" in names
    finally:
        discovery.stop()


@pytest.mark.slow
def test_the_watched_directory_disappears_and_comes_back(tmp_path: Path) -> None:
    scans, output = tmp_path / "beamline", tmp_path / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"
    watcher = _start_watcher(scans, config, log=log)
    try:
        _wait_for("the watcher", lambda: (output / "status.json").exists(), watcher, log, 90)
        shutil.rmtree(scans)
        _wait_for("it to notice", lambda: _log_says(log, "disappeared"), watcher, log, 30)
        time.sleep(1.0)  # some loops without the directory
        scans.mkdir()
        _wait_for("it to watch again", lambda: _log_says(log, "is there again"), watcher, log, 30)
        scan = beamline_scan(0, 16)
        write_scan(scans / "scan0000_manhattan.h5", scan)
        _wait_for(
            "the scan written after the directory came back to be trained",
            lambda: _states(output) == {"scan0000_manhattan.h5": "trained"},
            watcher,
            log,
            90,
        )
        _stop(watcher, log)
    finally:
        _kill_leftovers(watcher)
    text = log.read_text()
    assert text.count("disappeared") == 1 and text.count("is there again") == 1, text
    assert "Traceback" not in text


def _start_writer(path: Path) -> subprocess.Popen:
    """A detector writing 64x64 frames at 20 Hz for far longer than the test waits."""
    return subprocess.Popen(
        [
            *(sys.executable, str(HELPER), "write", str(path)),
            *("--frames", "2000", "--rate-hz", "20", "--size", "64"),
        ],
        env=_env(),
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_a_writer_killed_mid_scan_is_quarantined_as_stalled(tmp_path: Path) -> None:
    """Also: a scan longer than watch.max_frames_per_scan is quarantined once past it, as the
    watcher would otherwise hold all of its frames (the killed writers stay below it)."""
    scans, output = tmp_path / "beamline", tmp_path / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"
    stall_s, max_frames = 1.5, 200
    watcher = _start_watcher(
        scans,
        config,
        *("--set", f"watch.stall_timeout_s={stall_s}"),
        *("--set", f"watch.max_frames_per_scan={max_frames}"),
        log=log,
    )
    names = ["scan0005_dead.h5", "scan0006_dead.zarr"]
    too_long = "scan0007_long.h5"
    writers: list[subprocess.Popen] = []
    try:
        _wait_for("the watcher", lambda: (output / "status.json").exists(), watcher, log, 90)
        writers = [_start_writer(scans / name) for name in names]
        write_scan(scans / too_long, beamline_scan(7, max_frames + 40))
        _wait_for(
            "both scans to be followed",
            lambda: all(_log_says(log, f"{name}: following") for name in names),
            watcher,
            log,
            60,
        )
        time.sleep(1.0)  # some frames in
        for writer in writers:
            writer.send_signal(signal.SIGKILL)  # no close, no completion flag
            writer.wait(timeout=10)
        killed = time.monotonic()
        _wait_for(
            "both to be quarantined",
            lambda: _states(output) == dict.fromkeys([*names, too_long], "quarantined"),
            watcher,
            log,
            60,
        )
        assert time.monotonic() - killed >= stall_s - 0.5  # not before the stall timeout
        _stop(watcher, log)
    finally:
        for process in (watcher, *writers):
            if process.poll() is None:
                process.kill()
    ledger = Ledger.read_json(output / "ledger.json")
    for name in names:
        reason = ledger.scans[name].reason or ""
        assert reason.startswith(f"stalled: no new frame for {stall_s:g} s after "), reason
        assert ledger.scans[name].frames_read > 0
        assert (scans / "quarantine" / name).exists() and not (scans / name).exists()
    long_reason = ledger.scans[too_long].reason or ""
    assert long_reason.startswith(f"more than watch.max_frames_per_scan={max_frames} frames")
    assert ledger.scans[too_long].frames_trained == 0
    listed = (output / "quarantine.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in listed) == [*names, too_long]
    reasons = {line.split("\t")[1]: line.split("\t")[3] for line in listed}
    assert all(reasons[name].startswith("stalled") for name in names)
    assert "Traceback" not in log.read_text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (mounting one needs root; without, the test is skipped)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _fill(directory: Path) -> None:
    """Write a file until the file system refuses another byte."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        block = b"\0" * 65536
        while True:
            try:
                filler.write(block)
            except OSError:
                block = block[: len(block) // 2]
                if not block:
                    return


@pytest.mark.slow
def test_a_full_output_disk_stops_the_watcher_with_one_line_and_whole_files(
    tmp_path: Path, small_disk: Path
) -> None:
    scans, output = tmp_path / "beamline", small_disk / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"
    quiet = ["--set", "watch.status_every_s=1000", "--set", "watch.unreadable_after_s=0.5"]
    watcher = _start_watcher(scans, config, *quiet, log=log)
    try:
        _wait_for("the watcher", lambda: _log_says(log, "watching"), watcher, log, 90)
        _fill(small_disk)
        # A broken file: the watcher quarantines it and lists it in RUN/quarantine.tsv.
        (scans / "scan0001_broken.h5").write_bytes(b"not a scan")
        watcher.wait(timeout=60)
    finally:
        _kill_leftovers(watcher)
    text = log.read_text()
    assert watcher.returncode == 2, text
    errors = [line for line in text.splitlines() if line.startswith("ptycl: error:")]
    assert errors == [
        f"ptycl: error: {output / 'quarantine.tsv'}: cannot write (No space left on device)"
    ], text
    assert "Traceback" not in text
    # What is there is whole: no temporaries, no half-written list, the config complete.
    (small_disk / "filler").unlink()
    left = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    assert left == ["checkpoints/.lock", "config.yaml"], left  # the lock: 1 line, or empty
    assert yaml.safe_load((output / "config.yaml").read_text())["run"]["output_dir"] == str(output)
    assert (scans / "quarantine" / "scan0001_broken.h5").exists()


def test_outputs_are_replaced_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same without a small disk to fill: every write fails as on a full one."""
    from ptycl.errors import OutputError
    from ptycl.stream.ledger import write_json_atomic
    from ptycl.stream.quarantine import quarantine

    status = tmp_path / "status.json"
    write_json_atomic(status, {"scans": 1})
    listed = tmp_path / "quarantine.tsv"
    quarantine(tmp_path / "gone.h5", "no such file", listed)
    before = {status: status.read_text(), listed: listed.read_text()}

    def full(fd: int) -> None:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as err:
        write_json_atomic(status, {"scans": 2})
    assert str(err.value) == f"{status}: cannot write (No space left on device)"
    with pytest.raises(OutputError, match=r"quarantine\.tsv: cannot write"):
        quarantine(tmp_path / "bad.h5", "truncated", listed)
    monkeypatch.undo()
    assert {path: path.read_text() for path in before} == before
    assert json.loads(status.read_text()) == {"scans": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quarantine.tsv", "status.json"]
