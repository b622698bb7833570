"""A command that did none of its work exits non-zero with one line saying why.

`ptycl info` and `ptycl reconstruct` of a directory holding no scan, `ptycl train` over a
directory holding none, over scans that all fail to open, and over scans that are all
rejected: each used to print little or nothing and exit 0 (train: a metrics.json of NaN).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ptycl.cli import main
from ptycl.config import dump_config
from ptycl.io.source import write_scan
from tests.conftest import tiny_config
from tests.helpers_scans import tiny_scan


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ptycl: error:")]


def test_info_of_a_directory_without_scans(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("no scan here\n")
    assert main(["info", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _errors(captured.err) == [
        f"ptycl: error: {tmp_path}: no scan files in it (names ending in .h5, .cxi, .hdf5 or .zarr)"
    ]


def test_reconstruct_of_a_directory_without_scans(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reconstruct", str(empty), "--run", str(tmp_path / "run")]) == 2
    assert len(_errors(capsys.readouterr().err)) == 1
    assert not (tmp_path / "run").exists()  # said before any model was loaded or dir made


def _train(scans: Path, output: Path, tmp_path: Path, *overrides: str) -> int:
    config = tmp_path / "run.yaml"
    config.write_text(dump_config(tiny_config(scans, output, *overrides)))
    return main(["train", "-c", str(config)])


def test_train_over_a_directory_without_scans(tmp_path: Path, capsys: pytest.CaptureFixture):
    empty = tmp_path / "scans"
    empty.mkdir()
    assert _train(empty, tmp_path / "run", tmp_path) == 2
    [line] = _errors(capsys.readouterr().err)
    assert f"{empty}: no scan files in it: nothing trained" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_train_whose_scans_all_fail_to_open(tmp_path: Path, capsys: pytest.CaptureFixture):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "scan0000_cut.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (scans / "scan0001_text.h5").write_text("not hdf5\n")
    assert _train(scans, tmp_path / "run", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("skipping scan:") == 2  # each named, in its own line
    [line] = _errors(err)
    assert "none of the 2 scan(s)" in line and "nothing trained" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_train_whose_scans_are_all_rejected(tmp_path: Path, capsys: pytest.CaptureFixture):
    scans = tmp_path / "scans"
    scans.mkdir()
    for index in range(2):  # readable scans, but 16x16 frames for a 64x64 model input
        write_scan(scans / f"scan{index:04d}_small.h5", tiny_scan(frame_shape=(16, 16)))
    assert _train(scans, tmp_path / "run", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("smaller than the model input 64") == 2
    assert len(_errors(err)) == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_run_that_trained_exits_zero(
    tiny_scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The other side of the rule: a resumed run that finished before trains on nothing new
    and still succeeds (its scans were all usable). The last line names the outputs and
    the picture to open first, which exists."""
    run = tmp_path / "run"
    assert _train(tiny_scans, run, tmp_path, "run.log_level=INFO") == 0
    last = capsys.readouterr().err.splitlines()[-1]
    picture = run / "plots" / "reconstruction_scan0000_manhattan.png"
    assert f"outputs in {run} (" in last and f"open {picture} first" in last
    assert picture.stat().st_size > 1000
    config = tmp_path / "run.yaml"
    assert main(["train", "-c", str(config), "--resume"]) == 0
