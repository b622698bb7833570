"""Every kind of bad scan gives one ScanError that names the file and the problem."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycl.errors import ScanError
from ptycl.io import cxi
from ptycl.io.object_image import label_path_for
from ptycl.io.source import ScanSource, open_scan, write_scan
from tests.helpers_scans import tiny_scan, write_foreign_cxi


def _scan_error(
    path: Path, match: str, action: Callable[[ScanSource], object] | None = None
) -> ScanError:
    with pytest.raises(ScanError, match=match) as err:
        with open_scan(path, expected_frame_shape=(16, 16)) as source:
            if action is not None:
                action(source)
    assert err.value.path == str(path) and str(path) in str(err.value)
    assert "\n" not in str(err.value)
    return err.value


def _frames_and_translation(
    n: int = 5, n_translations: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    frames = np.ones((n, 16, 16), dtype=np.float32)
    return frames, np.zeros((n if n_translations is None else n_translations, 3))


def test_hdf5_file_cut_in_half(tmp_path: Path) -> None:
    path = write_scan(tmp_path / "cut.h5", tiny_scan(n_frames=40))
    size = path.stat().st_size
    os.truncate(path, size // 2)
    _scan_error(path, f"truncated: {size // 2} of {size} bytes present")


def test_zarr_frame_chunk_cut_short(tmp_path: Path) -> None:
    path = write_scan(tmp_path / "cut.zarr", tiny_scan(n_frames=4))
    chunk = path / cxi.DETECTOR_DATA / "c" / "2" / "0" / "0"
    os.truncate(chunk, 10)
    source = open_scan(path)
    source.read([0, 1])  # the intact frames still read
    with pytest.raises(ScanError, match="truncated or corrupt") as err:
        source.read([2])
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("omit", "named"),
    [
        ("distance", "distance"),
        ("energy", "energy"),
        ("x_pixel_size", "x_pixel_size"),
        ("y_pixel_size", "y_pixel_size"),
    ],
)
def test_missing_dataset_is_named(tmp_path: Path, omit: str, named: str) -> None:
    path = tmp_path / f"no_{omit}.cxi"
    write_foreign_cxi(path, *_frames_and_translation(), omit=(omit,))
    _scan_error(path, f"missing dataset /.*{named}")


def test_missing_translations(tmp_path: Path) -> None:
    path = tmp_path / "no_positions.h5"
    with h5py.File(path, "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.ones((3, 16, 16), np.uint16)
    _scan_error(path, "missing dataset /entry_1/sample_1/geometry_1/translation")


def test_frames_and_positions_of_different_counts(tmp_path: Path) -> None:
    path = tmp_path / "mismatch.cxi"
    write_foreign_cxi(path, *_frames_and_translation(n=10, n_translations=9))
    _scan_error(path, "10 frames but 9 translations")


@pytest.mark.parametrize(
    ("bad_value", "problem"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-3.0, "negative")],
)
def test_bad_float_counts(tmp_path: Path, bad_value: float, problem: str) -> None:
    frames, translation = _frames_and_translation(n=6)
    frames[4, 3, 7] = bad_value
    path = tmp_path / "bad_counts.cxi"
    write_foreign_cxi(path, frames, translation)
    with open_scan(path) as source:
        source.read([0, 1, 2, 3])  # the good frames read
    _scan_error(path, f"frame 4 has {problem} counts", lambda source: list(source.batches(3)))


def test_non_positive_geometry(tmp_path: Path) -> None:
    path = tmp_path / "zero_distance.cxi"
    write_foreign_cxi(path, *_frames_and_translation(), distance=0.0)
    _scan_error(path, "distance.*must be positive")


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_frame_shape_not_the_runs(tmp_path: Path, suffix: str) -> None:
    path = write_scan(tmp_path / f"wide{suffix}", tiny_scan(frame_shape=(16, 20)))
    _scan_error(path, "frames are 16x20, this run expects 16x16")


def test_frames_that_are_not_a_stack(tmp_path: Path) -> None:
    path = tmp_path / "flat.cxi"
    frames, translation = _frames_and_translation()
    write_foreign_cxi(path, frames[0], translation)
    _scan_error(path, r"must be \(N, H, W\)")


def test_not_a_scan_at_all(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("frames go here\n")
    _scan_error(text, "not an HDF5 file")

    other_hdf5 = tmp_path / "weights.h5"
    with h5py.File(other_hdf5, "w") as f:
        f["layer1"] = np.zeros(3)
    _scan_error(other_hdf5, "not a CXI scan")

    no_frames = tmp_path / "empty_entry.h5"
    with h5py.File(no_frames, "w") as f:
        f.create_group("entry_1/instrument_1")
    _scan_error(no_frames, "missing detector data")

    plain_dir = tmp_path / "some_dir"
    plain_dir.mkdir()
    _scan_error(plain_dir, "not a Zarr group")

    csv = tmp_path / "positions.csv"
    csv.write_text("1,2\n")
    _scan_error(csv, "not a scan")

    _scan_error(tmp_path / "never_written.h5", "no such file")


def test_corrupt_label_file(tmp_path: Path) -> None:
    path = write_scan(
        tmp_path / "scan0003_texture.h5", tiny_scan(frame_shape=(16, 16)), labels="none"
    )
    label_path_for(path).write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    with open_scan(path) as source, pytest.raises(ScanError, match="bad superblock") as err:
        source.label()
    assert str(label_path_for(path)) in str(err.value)


def test_ptycl_info_reports_each_bad_scan_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ptycl.cli import main

    write_scan(tmp_path / "scan0000_manhattan.h5", tiny_scan(n_frames=7))
    write_scan(tmp_path / "scan0001_manhattan.zarr", tiny_scan(n_frames=5), labels="separate")
    (tmp_path / "scan0002_broken.h5").write_bytes(b"not hdf5")
    assert main(["info", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert (
        "scan0000_manhattan.h5: 7 frames 16x16 uint32, complete" in lines[0]
        and "label in file" in lines[0]
    )
    assert (
        "scan0001_manhattan.zarr: 5 frames" in lines[1]
        and "label in scan0001_manhattan.label.h5" in lines[1]
    )
    assert lines[2] == f"{tmp_path / 'scan0002_broken.h5'}: not an HDF5 file"
    assert main(["info", str(tmp_path / "scan0000_manhattan.h5")]) == 0


def test_one_rule_says_which_entries_of_a_directory_are_scans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ptycl info`, `ptycl train` and `ptycl reconstruct` list a directory by the watcher's
    rule: labels, hidden temporaries and ptycl's own reconstructions are not scans."""
    from ptycl.cli import main
    from ptycl.config import load_config
    from ptycl.io.source import expand_scan_paths
    from ptycl.train.run import resolve_scans

    scan = write_scan(tmp_path / "scan0000_manhattan.h5", tiny_scan(n_frames=7))
    zarr_scan = write_scan(tmp_path / "scan0001_texture.zarr", tiny_scan(n_frames=5))
    upper = write_scan(tmp_path / "SCAN0002.CXI", tiny_scan(n_frames=3))
    # What a watcher run leaves beside the scans, and what other writers do.
    write_scan(tmp_path / "scan0000_manhattan.recon.h5", tiny_scan(n_frames=2))
    (tmp_path / "scan0000_manhattan.recon.png").write_bytes(b"png")
    (tmp_path / "scan0003_siemens.label.h5").write_bytes(b"label")
    (tmp_path / ".scan0004_siemens.h5.partial").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("beamtime notes\n")
    (tmp_path / "quarantine").mkdir()

    expected = sorted([scan, zarr_scan, upper])
    assert expand_scan_paths([tmp_path]) == expected
    # A file or a Zarr group named directly stands for itself, in the order given.
    assert expand_scan_paths([zarr_scan, scan]) == [zarr_scan, scan]
    config = load_config(None, [f"scans=[{tmp_path}]"])
    assert resolve_scans(config) == expected

    assert main(["info", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(path) for path in expected]


def test_frames_smaller_than_the_model_input_are_one_scan_error(tmp_path: Path) -> None:
    """`ptycl train` and `ptycl reconstruct` refuse such a scan in one line, as the watcher
    does, and a simulation that could only give such scans is refused before it runs."""
    import torch

    from ptycl.config import load_config
    from ptycl.errors import ConfigError
    from ptycl.model.ptychonn import build_model
    from ptycl.prep.scan_data import load_scan
    from ptycl.recon.infer import infer_scan
    from ptycl.train.run import resolve_scans

    path = write_scan(tmp_path / "small.h5", tiny_scan(frame_shape=(16, 16)))
    config = load_config(None, ["model.width=4"])
    problem = "frames are 16x16, smaller than the model input 64"
    with pytest.raises(ScanError, match=problem) as loading:
        load_scan(path, config.prep, seed=0)
    model = build_model(config.model, config.prep.input_size)
    with pytest.raises(ScanError, match=problem) as inferring:
        infer_scan(model, path, config.prep, torch.device("cpu"))
    empty = write_scan(tmp_path / "empty.h5", tiny_scan(n_frames=0, frame_shape=(64, 64)))
    with pytest.raises(ScanError, match="the scan has no frames") as loading_empty:
        load_scan(empty, config.prep, seed=0)
    with pytest.raises(ScanError, match="the scan has no frames") as inferring_empty:
        infer_scan(model, empty, config.prep, torch.device("cpu"))
    for err in (loading.value, inferring.value):
        assert err.path == str(path) and "\n" not in str(err)
    for err in (loading_empty.value, inferring_empty.value):
        assert err.path == str(empty)

    out_dir = tmp_path / "never_simulated"
    too_large = load_config(
        None, ["prep.input_size=128", "simulate.frame_size=64", f"simulate.out_dir={out_dir}"]
    )
    with pytest.raises(
        ConfigError, match=r"prep\.input_size: simulate\.frame_size: frames are 64x64"
    ):
        resolve_scans(too_large)
    assert not out_dir.exists()
