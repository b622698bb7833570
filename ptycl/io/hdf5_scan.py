"""HDF5 scans in the CXI layout: a SWMR streaming writer, a finished-scan writer, a reader.

Design notes: docs/design.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ptycl.errors import ScanError
from ptycl.io import cxi
from ptycl.io.base import (
    ScanSource,
    StreamingScanWriter,
    StreamProgress,
    check_array_shapes,
    check_scan_shape,
    committed_progress,
)
from ptycl.io.guards import hdf5_stored_rows, storage_errors
from ptycl.io.object_image import has_object_image, read_object_image_from, write_object_image
from ptycl.io.records import ObjectImage, ScanMetadata

LIBVER = ("v110", "v110")
TRANSLATION_CHUNK_ROWS = 1024


def _partial_path(path: Path) -> Path:
    """Where a scan is built before it appears under its name (hidden from directory watchers)."""
    return path.with_name(f".{path.name}.partial")


@dataclass(frozen=True)
class _Datasets:
    """The datasets a writer keeps touching."""

    frames: h5py.Dataset
    translation: h5py.Dataset
    committed: h5py.Dataset
    complete: h5py.Dataset

    @classmethod
    def of(cls, f: h5py.File) -> _Datasets:
        return cls(
            f[cxi.DETECTOR_DATA], f[cxi.TRANSLATION], f[cxi.COMMITTED_FRAMES], f[cxi.COMPLETE]
        )


def _create_tree(
    f: h5py.File,
    metadata: ScanMetadata,
    frames: np.ndarray,
    translation: np.ndarray,
    label: ObjectImage | None,
) -> _Datasets:
    """Every dataset and attribute of a scan, holding ``frames`` (possibly none yet)."""
    geometry = metadata.geometry
    height, width = geometry.frame_shape
    f.attrs.update(metadata.attrs)
    f.attrs[cxi.SCAN_ID_ATTR] = metadata.scan_id
    f[cxi.CXI_VERSION_PATH] = cxi.CXI_VERSION
    f.create_dataset(
        cxi.DETECTOR_DATA, data=frames, maxshape=(None, height, width), chunks=(1, height, width)
    )
    f[cxi.DATA_LINK] = h5py.SoftLink("/" + cxi.DETECTOR_DATA)
    f.create_dataset(
        cxi.TRANSLATION, data=translation, maxshape=(None, 3), chunks=(TRANSLATION_CHUNK_ROWS, 3)
    )
    f[cxi.TRANSLATION].attrs["units"] = "m"
    f[cxi.DISTANCE] = np.float64(geometry.distance_m)
    f[cxi.Y_PIXEL_SIZE] = np.float64(geometry.detector_pixel_m[0])
    f[cxi.X_PIXEL_SIZE] = np.float64(geometry.detector_pixel_m[1])
    f[cxi.ENERGY] = np.float64(geometry.energy_j)
    if metadata.mask is not None:
        f[cxi.MASK] = cxi.mask_to_cxi(metadata.mask)
    if metadata.sample_family is not None:
        f.require_group(cxi.SAMPLE).attrs[cxi.SAMPLE_FAMILY_ATTR] = metadata.sample_family
    f[cxi.COMMITTED_FRAMES] = np.int64(len(frames))
    f[cxi.COMPLETE] = np.int8(0)
    if label is not None:
        write_object_image(f, label)
    return _Datasets.of(f)


def write_hdf5_scan(
    path: Path,
    metadata: ScanMetadata,
    frames: np.ndarray,
    positions_m: np.ndarray,
    label: ObjectImage | None,
) -> None:
    """A finished scan, built aside and renamed into place, so it is complete on arrival."""
    if len(frames) != len(positions_m):
        raise ValueError(f"{path}: {len(frames)} frames but {len(positions_m)} positions")
    partial = _partial_path(path)
    with h5py.File(partial, "w", libver=LIBVER) as f:
        datasets = _create_tree(
            f, metadata, frames, cxi.translation_from_positions(positions_m), label
        )
        datasets.complete[()] = 1
    os.replace(partial, path)


class HDF5StreamingWriter(StreamingScanWriter):
    def __init__(
        self, path: Path, metadata: ScanMetadata, frame_dtype: np.dtype, label: ObjectImage | None
    ) -> None:
        super().__init__(path, metadata, frame_dtype)
        partial = _partial_path(path)
        self._file = h5py.File(partial, "w", libver=LIBVER)
        empty = np.empty((0, *metadata.geometry.frame_shape), dtype=frame_dtype)
        self._datasets = _create_tree(self._file, metadata, empty, np.empty((0, 3)), label)
        self._file.swmr_mode = True
        # Renaming an open file is safe on POSIX; the scan appears only once SWMR readers can open it.
        os.replace(partial, path)

    def _append(self, frames: np.ndarray, translation: np.ndarray) -> None:
        start, stop = self.n_committed, self.n_committed + len(frames)
        ds = self._datasets
        for dataset, rows in ((ds.frames, frames), (ds.translation, translation)):
            dataset.resize(stop, axis=0)
            dataset[start:stop] = rows
            dataset.flush()
        ds.committed[()] = stop
        ds.committed.flush()

    def mark_complete(self) -> None:
        self._datasets.complete[()] = 1
        self._datasets.complete.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class HDF5ScanSource(ScanSource):
    def __init__(self, path: Path, expected_frame_shape: tuple[int, int] | None = None) -> None:
        self._file = cxi.open_hdf5(path)
        try:
            with storage_errors(path, "damaged HDF5 metadata"):
                self._open(path, expected_frame_shape)
        except BaseException:
            self._file.close()
            raise

    def _open(self, path: Path, expected_frame_shape: tuple[int, int] | None) -> None:
        f = self._file
        self._frames = f[cxi.locate_frames(f, path)]
        self._translation = f[cxi.locate_translation(f, path)]
        frame_shape = check_array_shapes(
            path,
            self._frames.dtype,
            self._frames.shape,
            self._translation.dtype,
            self._translation.shape,
        )
        self._stream = self._stream_datasets(path) if cxi.STREAM in f else None
        super().__init__(path, cxi.read_metadata(f, path, frame_shape), self._frames.dtype)
        self._stored = (
            hdf5_stored_rows(self._frames, path, "detector data"),
            hdf5_stored_rows(self._translation, path, "translations"),
        )
        state = self.progress()
        check_scan_shape(
            path,
            frame_shape,
            self._frames.shape[0],
            self._translation.shape[0],
            state.complete,
            expected_frame_shape,
        )

    def _stream_datasets(self, path: Path) -> tuple[h5py.Dataset, h5py.Dataset]:
        """The completion flag and the committed count: scalar integers, as the writer made them."""
        found = []
        for member in (cxi.COMPLETE, cxi.COMMITTED_FRAMES):
            node = self._file.get(member)
            if not isinstance(node, h5py.Dataset) or node.shape not in ((), (1,)):
                raise ScanError(path, f"streaming state /{member} missing or not a scalar")
            if node.dtype.kind not in "iu":
                raise ScanError(path, f"streaming state /{member} is {node.dtype}, not an integer")
            found.append(node)
        return found[0], found[1]

    def _fresh(self, dataset: h5py.Dataset) -> h5py.Dataset:
        # Only a file a SWMR writer holds can change. Refreshing one that cannot is not just
        # wasted: HDF5 shares a file opened twice in one process, and a refresh through one
        # handle breaks the same dataset open through the other ("can't insert duplicate key").
        if self._file.swmr_mode:
            dataset.refresh()
        return dataset

    def _poll(self) -> StreamProgress:
        # Read in the writer's reverse order: the flag, then the count, then the lengths, so a
        # flag seen set means the count is final, and the datasets hold at least that count.
        with storage_errors(self.path, "streaming state unreadable"):
            state = None
            if self._stream is not None:
                state = [int(np.asarray(self._fresh(d)[()]).reshape(-1)[0]) for d in self._stream]
            available = min(
                self._fresh(self._frames).shape[0], self._fresh(self._translation).shape[0]
            )
        if state is None:  # a foreign file: finished by definition
            return StreamProgress(available, True)
        flag, committed = state
        if flag not in (0, 1):
            raise ScanError(self.path, f"completion flag /{cxi.COMPLETE} is {flag}, not 0 or 1")
        return committed_progress(self.path, committed, bool(flag), available)

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        for rows in self._stored:
            rows.require(stop)
        return self._frames[start:stop], self._translation[start:stop]

    def _read_sorted(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for rows in self._stored:
            rows.require(int(indices[-1]) + 1)
        return self._frames[indices], self._translation[indices]

    def label_in_file(self) -> ObjectImage | None:
        with storage_errors(self.path, "object image unreadable"):
            if not has_object_image(self._file):
                return None
            return read_object_image_from(self._file, self.path)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
