"""Compressed detector data: HDF5 filters written by hdf5plugin itself (bitshuffle + LZ4 as
Dectris Eiger files have it, Blosc, Zstandard, LZ4), Zarr v3 codecs and sharding; and the
guards on compressed input: memory stays bounded whatever a file inflates to, a chunk too large
to decode is refused, and a crafted bitshuffle chunk that kills the plugin (a segmentation
fault) is refused before the plugin sees it."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from ptycl.errors import ScanError
from ptycl.io import cxi
from ptycl.io.source import open_scan, write_scan
from tests.helpers_scans import tiny_scan

FILTERS = {
    "bitshuffle-lz4": hdf5plugin.Bitshuffle(cname="lz4"),
    "bitshuffle-zstd": hdf5plugin.Bitshuffle(cname="zstd"),
    "blosc-lz4": hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE),
    "blosc-zstd": hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE),
    "zstd": hdf5plugin.Zstd(),
    "lz4": hdf5plugin.LZ4(),
}


def _detector_counts(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Sparse photon counts, as a detector sees them far from the centre (and compresses)."""
    return np.random.default_rng(seed).poisson(0.3, (n, *shape)).astype(np.uint32)


def _compress_frames(path: Path, frames: np.ndarray, compression: dict, external: str = "") -> None:
    """Replace the scan's detector data by ``frames`` under ``compression``, one chunk per
    frame; with ``external``, in that file beside it, reached by an external link as an Eiger
    master file reaches its data files."""
    _n, height, width = frames.shape
    with h5py.File(path, "a") as f:
        del f[cxi.DETECTOR_DATA]
        target = f
        if external:
            target = h5py.File(path.parent / external, "w")
        target.create_dataset(
            "entry/data/data" if external else cxi.DETECTOR_DATA,
            data=frames,
            chunks=(1, height, width),
            **compression,
        )
        if external:
            target.close()
            f[cxi.DETECTOR_DATA] = h5py.ExternalLink(external, "entry/data/data")


@pytest.mark.parametrize("name", list(FILTERS))
def test_frames_compressed_by_hdf5plugin_read_back(tmp_path, name):
    scan = tiny_scan(n_frames=10, frame_shape=(32, 32))
    path = write_scan(tmp_path / "scan.h5", scan)
    frames = _detector_counts(10, (32, 32))
    _compress_frames(path, frames, FILTERS[name])
    with h5py.File(path) as f:
        code = f[cxi.DETECTOR_DATA].id.get_create_plist().get_filter(0)[0]
        assert code == FILTERS[name].filter_id  # hdf5plugin's filter, not a fallback
    with open_scan(path) as source:
        back = source.read(np.arange(10))
    np.testing.assert_array_equal(back.frames, frames)
    np.testing.assert_array_equal(back.positions_m, scan.positions_m)


def test_eiger_layout_master_with_bitshuffle_lz4_data_file(tmp_path):
    scan = tiny_scan(n_frames=12, frame_shape=(32, 32))
    path = write_scan(tmp_path / "scan_master.h5", scan)
    frames = _detector_counts(12, (32, 32), seed=1)
    _compress_frames(path, frames, FILTERS["bitshuffle-lz4"], external="scan_data_000001.h5")
    with open_scan(path) as source:
        np.testing.assert_array_equal(np.concatenate([b.frames for b in source.batches(5)]), frames)


def _bitshuffle_scan(tmp_path: Path) -> tuple[Path, bytes]:
    path = write_scan(tmp_path / "scan.h5", tiny_scan(n_frames=4, frame_shape=(64, 64)))
    _compress_frames(path, _detector_counts(4, (64, 64)), FILTERS["bitshuffle-lz4"])
    with h5py.File(path) as f:
        raw = f[cxi.DETECTOR_DATA].id.read_direct_chunk((2, 0, 0))[1]
    return path, raw


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda raw: struct.pack(">Q", 2 * 64 * 64 * 4) + raw[8:], "declares 32768 bytes"),
        (lambda raw: raw[:12] + struct.pack(">I", 10**8) + raw[16:], "run past the end"),
        (lambda raw: raw[:-3], "blocks fill"),
    ],
    ids=["header-claims-more", "block-runs-past-the-end", "chunk-cut-short"],
)
def test_crafted_bitshuffle_chunk_is_refused_not_a_crash(tmp_path, damage, problem):
    """Unguarded, hdf5plugin's bitshuffle filter dies of a segmentation fault on the first
    two (checked in a child process here, so a regression fails the test, not the run)."""
    path, raw = _bitshuffle_scan(tmp_path)
    with h5py.File(path, "a") as f:
        f[cxi.DETECTOR_DATA].id.write_direct_chunk((2, 0, 0), damage(raw))
    done = subprocess.run(
        [sys.executable, "-m", "ptycl", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(path)) and problem in lines[0]
    assert "the chunk at (2, 0, 0) is damaged" in lines[0]  # the frame is named


def test_compressed_scan_inflating_to_gigabytes_is_refused_before_decoding(tmp_path):
    """48 frames of 2048x2048 uint32 zeros: 800 MB of frames in a file of well under 1 MB, a
    ratio no detector writes: refused from the chunk sizes, before anything is decoded."""
    path = write_scan(tmp_path / "scan.h5", tiny_scan(n_frames=48, frame_shape=(16, 16)))
    with h5py.File(path, "a") as f:
        del f[cxi.DETECTOR_DATA]
        data = f.create_dataset(
            cxi.DETECTOR_DATA,
            shape=(48, 2048, 2048),
            dtype=np.uint32,
            chunks=(1, 2048, 2048),
            fillvalue=0,
            **hdf5plugin.Zstd(),
        )
        for i in range(48):
            data[i] = 0  # every chunk stored, compressed to almost nothing
        del f[cxi.MASK]
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ScanError, match="decompression bomb"):
        open_scan(path)


def test_compressed_chunks_too_large_to_decode_are_refused(tmp_path, monkeypatch):
    """A chunk of 16 frames of 2048x2048 uint32 decodes to 256 MB + 1 frame's worth: more than
    the chunk cap, however small it is on disk (the ratio check, which would refuse these
    zeros first, is lifted to reach the cap)."""
    monkeypatch.setattr("ptycl.io.guards.MAX_COMPRESSION_RATIO", 10**9)
    path = write_scan(tmp_path / "scan.h5", tiny_scan(n_frames=17, frame_shape=(16, 16)))
    with h5py.File(path, "a") as f:
        del f[cxi.DETECTOR_DATA]
        del f[cxi.MASK]
        f.create_dataset(
            cxi.DETECTOR_DATA,
            shape=(17, 2048, 2048),
            dtype=np.uint32,
            chunks=(17, 2048, 2048),
            **hdf5plugin.Zstd(),
        )
        f[cxi.DETECTOR_DATA][0] = 0
    with pytest.raises(ScanError, match="more than 268435456 bytes"):
        with open_scan(path) as source:
            source.read([0])


@pytest.mark.parametrize(
    "codecs",
    [
        {"compressors": [BloscCodec(cname="lz4", shuffle="bitshuffle")]},
        {"compressors": [ZstdCodec(level=3)]},
        {"compressors": [BloscCodec(cname="zstd", clevel=5)], "shards": (8, 32, 32)},
        {"compressors": [ZstdCodec(level=1)], "shards": (4, 32, 32)},
    ],
    ids=["blosc-lz4", "zstd", "blosc-zstd-sharded", "zstd-sharded"],
)
def test_zarr_v3_codecs_and_sharding_read_back(tmp_path, codecs):
    scan = tiny_scan(n_frames=18, frame_shape=(32, 32))
    path = write_scan(tmp_path / "scan.zarr", scan)
    frames = _detector_counts(18, (32, 32), seed=2)
    root = zarr.open_group(path, mode="r+")
    del root[cxi.DETECTOR_DATA]
    root.create_array(
        cxi.DETECTOR_DATA,
        data=frames,
        chunks=(1, 32, 32),
        **codecs,
        config={"write_empty_chunks": True},
    )
    with open_scan(path) as source:
        back = np.concatenate([b.frames for b in source.batches(5)])
        np.testing.assert_array_equal(back, frames)
        assert source.position_convention.kind == "sample"
