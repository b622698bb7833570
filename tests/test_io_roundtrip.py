"""Scans written and read back: bit-exact frames, positions, geometry, mask and labels."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycl.io import cxi
from ptycl.io.object_image import label_path_for, read_object_image, write_object_image
from ptycl.io.source import open_scan, open_streaming_writer, write_scan
from tests.helpers_scans import tiny_scan, write_foreign_cxi

SUFFIXES = [".h5", ".zarr"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("labels", ["in_scan", "separate", "none"])
def test_finished_scan_round_trip(tmp_path: Path, suffix: str, labels: str) -> None:
    scan = tiny_scan(n_frames=13, frame_shape=(16, 12), dtype="uint16")
    path = write_scan(tmp_path / f"scan0007_manhattan{suffix}", scan, labels=labels)
    assert label_path_for(path).exists() == (labels == "separate")
    assert not list(tmp_path.glob(".*partial"))  # built aside, renamed into place
    with open_scan(path) as source:
        assert source.is_complete() and source.n_committed() == 13
        assert source.frame_dtype == np.uint16
        assert source.metadata.geometry == scan.metadata.geometry
        assert source.metadata.scan_id == "scan0000"
        assert source.metadata.sample_family == "manhattan"
        assert source.metadata.attrs == {"beamline": "test"}
        np.testing.assert_array_equal(source.metadata.mask, scan.metadata.mask)
        batch = source.read(np.arange(13))
        np.testing.assert_array_equal(batch.frames, scan.frames)
        np.testing.assert_array_equal(batch.positions_m, scan.positions_m)  # two sign flips: exact
        shuffled = source.read([9, 2, 2, 11])
        np.testing.assert_array_equal(shuffled.frames, scan.frames[[9, 2, 2, 11]])
        np.testing.assert_array_equal(shuffled.positions_m, scan.positions_m[[9, 2, 2, 11]])
        with pytest.raises(IndexError, match="13 committed"):
            source.read([12, 13])
        assert [b.indices.tolist() for b in source.batches(5, start=3)] == [
            [3, 4, 5, 6, 7],
            [8, 9, 10, 11, 12],
        ]
        label = source.label()
    if labels == "none":
        assert label is None
    else:
        np.testing.assert_array_equal(label.values, scan.truth.values)
        assert (label.pixel_m, label.center_m) == (scan.truth.pixel_m, scan.truth.center_m)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_translation_follows_the_cxi_convention(tmp_path: Path, suffix: str) -> None:
    """CXI stores the sample translation (x, y, z): the negated probe position."""
    scan = tiny_scan(n_frames=4)
    path = write_scan(tmp_path / f"s{suffix}", scan)
    if suffix == ".h5":
        with h5py.File(path, "r") as f:
            translation = f[cxi.TRANSLATION][...]
            assert f[cxi.DATA_LINK].id == f[cxi.DETECTOR_DATA].id  # the soft link resolves
            assert isinstance(f.get(cxi.DATA_LINK, getlink=True), h5py.SoftLink)
    else:
        import zarr

        translation = zarr.open_group(str(path), mode="r")[cxi.TRANSLATION][...]
    np.testing.assert_array_equal(translation[:, 0], -scan.positions_m[:, 1])
    np.testing.assert_array_equal(translation[:, 1], -scan.positions_m[:, 0])
    np.testing.assert_array_equal(translation[:, 2], 0.0)


def test_frames_are_chunked_one_per_frame(tmp_path: Path) -> None:
    path = write_scan(tmp_path / "s.h5", tiny_scan(frame_shape=(16, 12)))
    with h5py.File(path, "r") as f:
        assert f[cxi.DETECTOR_DATA].chunks == (1, 16, 12)
    zpath = write_scan(tmp_path / "s.zarr", tiny_scan(n_frames=5, frame_shape=(16, 12)))
    assert len(list((zpath / cxi.DETECTOR_DATA / "c").rglob("*"))) >= 5


def test_reads_a_foreign_cxi_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = rng.random((6, 10, 10)).astype(np.float32) * 100
    translation = rng.uniform(-1e-6, 1e-6, (6, 3))
    path = tmp_path / "elsewhere.cxi"
    write_foreign_cxi(path, frames, translation, energy=1.4e-15, distance=3.0)
    with open_scan(path) as source:
        assert source.is_complete() and source.n_committed() == 6
        geometry = source.metadata.geometry
        assert (geometry.energy_j, geometry.distance_m, geometry.frame_shape) == (
            1.4e-15,
            3.0,
            (10, 10),
        )
        assert geometry.detector_pixel_m == (172e-6, 172e-6)
        assert source.metadata.scan_id == "elsewhere" and source.metadata.sample_family is None
        assert source.metadata.mask is None and source.label() is None
        batch = source.read(range(6))
    np.testing.assert_array_equal(batch.frames, frames)
    np.testing.assert_array_equal(
        batch.positions_m, np.stack([-translation[:, 1], -translation[:, 0]], axis=1)
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_label_arriving_later_is_found(tmp_path: Path, suffix: str) -> None:
    scan = tiny_scan(n_frames=3)
    path = write_scan(tmp_path / f"scan0001_siemens{suffix}", scan, labels="none")
    with open_scan(path) as source:
        assert source.label() is None
        write_object_image(label_path_for(path), scan.truth)
        np.testing.assert_array_equal(source.label().values, scan.truth.values)
    assert label_path_for(path).name == "scan0001_siemens.label.h5"


def test_object_image_file_round_trip(tmp_path: Path) -> None:
    truth = tiny_scan().truth
    write_object_image(tmp_path / "recon.h5", truth)
    back = read_object_image(tmp_path / "recon.h5")
    np.testing.assert_array_equal(back.values, truth.values)
    assert back.values.dtype == np.complex64
    assert (back.pixel_m, back.center_m) == (truth.pixel_m, truth.center_m)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_streamed_scan_reads_like_a_written_one(tmp_path: Path, suffix: str) -> None:
    scan = tiny_scan(n_frames=10)
    path = tmp_path / f"s{suffix}"
    with open_streaming_writer(path, scan.metadata, np.uint32, label=scan.truth) as writer:
        writer.write_frames(scan.frames[:4], scan.positions_m[:4])
        for i in range(4, 10):
            writer.write_frame(scan.frames[i], scan.positions_m[i])
        with open_scan(path) as early:
            assert early.n_committed() == 10 and not early.is_complete()
        writer.mark_complete()
    with open_scan(path) as source:
        assert source.is_complete()
        batch = source.read(range(10))
        np.testing.assert_array_equal(batch.frames, scan.frames)
        np.testing.assert_array_equal(batch.positions_m, scan.positions_m)
        np.testing.assert_array_equal(source.label().values, scan.truth.values)


def test_simulate_writes_scans_named_by_index_and_family(tmp_path: Path) -> None:
    pytest.importorskip("ptycl.simulate.beamline")
    from ptycl.config import SimulateSettings
    from ptycl.simulate.run import simulate_scans

    settings = SimulateSettings(
        out_dir=tmp_path,
        n_scans=2,
        frames_per_scan=12,
        frame_size=32,
        families=["siemens", "texture"],
        labels="separate",
    )
    paths = simulate_scans(settings)
    assert [p.name for p in paths] == ["scan0000_siemens.h5", "scan0001_texture.h5"]
    with open_scan(paths[1], expected_frame_shape=(32, 32)) as source:
        assert source.is_complete() and source.n_committed() == 12
        assert source.metadata.sample_family == "texture"
        assert source.label_in_file() is None and source.label() is not None
        first = source.read(range(12)).frames
    stamp = paths[1].stat().st_mtime_ns
    again = simulate_scans(settings.model_copy(update={"n_scans": 3}), reuse_existing=True)
    assert paths[1].stat().st_mtime_ns == stamp  # reused, not rewritten
    assert again[2].name == "scan0002_siemens.h5"
    # The random numbers of scan i come from (seed, i) alone: regenerating it gives it back.
    regenerated = simulate_scans(settings.model_copy(update={"out_dir": tmp_path / "again"}))
    with open_scan(regenerated[1]) as source:
        np.testing.assert_array_equal(source.read(range(12)).frames, first)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_two_sources_on_one_file_in_one_process(tmp_path: Path, suffix: str) -> None:
    """HDF5 shares a file opened twice in a process; one source must not upset the other."""
    scan = tiny_scan(n_frames=6)
    path = write_scan(tmp_path / f"s{suffix}", scan)
    with open_scan(path) as first:
        first.read([0])
        with open_scan(path) as second:
            assert second.n_committed() == 6
            np.testing.assert_array_equal(second.read(range(6)).frames, scan.frames)
        np.testing.assert_array_equal(first.read(range(6)).frames, scan.frames)
