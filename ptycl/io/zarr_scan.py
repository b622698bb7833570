"""Zarr v3 scans: the CXI tree as a group, a streaming writer, a finished-scan writer, a reader.

Zarr has no soft links, so ``/entry_1/data_1`` carries a ``soft_links`` attribute naming the
detector data path. Streaming (``append`` publishes the new shape before the chunk): resize,
write the frames and translations, then rewrite the root group's attributes with the new
committed count; completion is another root attribute. zarr's local store writes every
document and chunk to a temporary file and renames it, so a reader sees either the old or the
new version of each, never a torn one. Readers re-open the group on every poll (a zarr array
object caches its shape) and read only up to the committed count.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

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
from ptycl.io.guards import ZARR_ERRORS, ContainedStore, storage_errors, zarr_stored_rows
from ptycl.io.object_image import has_object_image, read_object_image_from, write_object_image
from ptycl.io.records import ObjectImage, ScanMetadata

TRANSLATION_CHUNK_ROWS = 1024
# zarr leaves out a chunk equal to the fill value unless told otherwise; a reader then cannot
# tell a frame of zeros from one never written, so ptycl stores every chunk of its arrays.
STORE_EVERY_CHUNK = {"write_empty_chunks": True}


def _create_tree(
    root: zarr.Group,
    metadata: ScanMetadata,
    frames: np.ndarray,
    translation: np.ndarray,
    label: ObjectImage | None,
) -> None:
    """Every array and attribute of a scan, holding ``frames`` (possibly none yet)."""
    geometry = metadata.geometry
    root.attrs.update(
        {
            **metadata.attrs,
            cxi.SCAN_ID_ATTR: metadata.scan_id,
            cxi.ZARR_COMMITTED_ATTR: len(frames),
            cxi.ZARR_COMPLETE_ATTR: False,
        }
    )
    root.create_array(cxi.CXI_VERSION_PATH, data=np.asarray(cxi.CXI_VERSION), compressors=None)
    data = root.create_array(
        cxi.DETECTOR_DATA,
        shape=frames.shape,
        dtype=frames.dtype,
        chunks=(1, *geometry.frame_shape),
        compressors=None,
        fill_value=0,
        config=STORE_EVERY_CHUNK,  # one chunk file per frame on disk, even an all-zero one
    )
    if len(frames):
        data[:] = frames
    root.require_group(cxi.DATA_GROUP).attrs[cxi.ZARR_SOFT_LINKS_ATTR] = {
        "data": "/" + cxi.DETECTOR_DATA
    }
    positions = root.create_array(
        cxi.TRANSLATION,
        shape=translation.shape,
        dtype=np.float64,
        chunks=(TRANSLATION_CHUNK_ROWS, 3),
        compressors=None,
        fill_value=0.0,
        config=STORE_EVERY_CHUNK,
    )
    if len(translation):
        positions[:] = translation
    positions.attrs["units"] = "m"
    for member, value in (
        (cxi.DISTANCE, geometry.distance_m),
        (cxi.Y_PIXEL_SIZE, geometry.detector_pixel_m[0]),
        (cxi.X_PIXEL_SIZE, geometry.detector_pixel_m[1]),
        (cxi.ENERGY, geometry.energy_j),
    ):
        root.create_array(member, data=np.asarray(value, dtype=np.float64), compressors=None)
    if metadata.mask is not None:
        root.create_array(cxi.MASK, data=cxi.mask_to_cxi(metadata.mask), compressors=None)
    if metadata.sample_family is not None:
        root.require_group(cxi.SAMPLE).attrs[cxi.SAMPLE_FAMILY_ATTR] = metadata.sample_family
    if label is not None:
        write_object_image(root, label)


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _make_room(path: Path) -> None:
    """Clear the way for a new group at ``path``, replacing only an earlier Zarr group."""
    if path.is_dir() and (path / "zarr.json").exists():
        shutil.rmtree(path)
    elif path.exists():
        raise FileExistsError(f"{path} exists and is not a Zarr group; not replacing it")


def _build_aside(
    path: Path,
    metadata: ScanMetadata,
    frames: np.ndarray,
    translation: np.ndarray,
    label: ObjectImage | None,
) -> Path:
    partial = _partial_path(path)
    if partial.exists():
        shutil.rmtree(partial)  # left by a writer that died
    root = zarr.open_group(LocalStore(partial), mode="w", zarr_format=3)
    _create_tree(root, metadata, frames, translation, label)
    return partial


def write_zarr_scan(
    path: Path,
    metadata: ScanMetadata,
    frames: np.ndarray,
    positions_m: np.ndarray,
    label: ObjectImage | None,
) -> None:
    """A finished scan, built aside and renamed into place, so it is complete on arrival."""
    if len(frames) != len(positions_m):
        raise ValueError(f"{path}: {len(frames)} frames but {len(positions_m)} positions")
    partial = _build_aside(
        path, metadata, frames, cxi.translation_from_positions(positions_m), label
    )
    zarr.open_group(LocalStore(partial), mode="r+").attrs[cxi.ZARR_COMPLETE_ATTR] = True
    _make_room(path)
    os.rename(partial, path)


class ZarrStreamingWriter(StreamingScanWriter):
    def __init__(
        self, path: Path, metadata: ScanMetadata, frame_dtype: np.dtype, label: ObjectImage | None
    ) -> None:
        super().__init__(path, metadata, frame_dtype)
        empty = np.empty((0, *metadata.geometry.frame_shape), dtype=frame_dtype)
        partial = _build_aside(path, metadata, empty, np.empty((0, 3)), label)
        _make_room(path)
        os.rename(partial, path)
        # The store is bound to a directory path: open it again under the final name (an
        # array opened again forgets its creation config).
        self._root = zarr.open_group(LocalStore(path), mode="r+")
        self._frames = self._root[cxi.DETECTOR_DATA].with_config(STORE_EVERY_CHUNK)
        self._translation = self._root[cxi.TRANSLATION].with_config(STORE_EVERY_CHUNK)

    def _append(self, frames: np.ndarray, translation: np.ndarray) -> None:
        start, stop = self.n_committed, self.n_committed + len(frames)
        for array, rows in ((self._frames, frames), (self._translation, translation)):
            array.resize((stop, *array.shape[1:]))
            array[start:stop] = rows
        self._root.attrs[cxi.ZARR_COMMITTED_ATTR] = stop

    def mark_complete(self) -> None:
        self._root.attrs[cxi.ZARR_COMPLETE_ATTR] = True

    def close(self) -> None:
        """Nothing stays open: every write above is already on disk."""


class ZarrScanSource(ScanSource):
    def __init__(self, path: Path, expected_frame_shape: tuple[int, int] | None = None) -> None:
        self._store = ContainedStore(path)
        with storage_errors(path, "unreadable Zarr metadata", ZARR_ERRORS):
            self._open(path, expected_frame_shape)

    def _open(self, path: Path, expected_frame_shape: tuple[int, int] | None) -> None:
        root = self._open_root(path)
        self._frames_path = cxi.locate_frames(root, path)
        self._translation_path = cxi.locate_translation(root, path)
        frames, translation = root[self._frames_path], root[self._translation_path]
        frame_shape = check_array_shapes(
            path,
            np.dtype(frames.dtype),
            frames.shape,
            np.dtype(translation.dtype),
            translation.shape,
        )
        super().__init__(path, cxi.read_metadata(root, path, frame_shape), np.dtype(frames.dtype))
        state = self.progress()
        self._stored = (
            zarr_stored_rows(lambda: self._frames, path, "detector data"),
            zarr_stored_rows(lambda: self._translation, path, "translations"),
        )
        check_scan_shape(
            path,
            frame_shape,
            self._frames.shape[0],
            self._translation.shape[0],
            state.complete,
            expected_frame_shape,
        )

    def _open_root(self, path: Path) -> zarr.Group:
        try:
            return zarr.open_group(self._store, mode="r")
        except zarr.errors.GroupNotFoundError:
            raise ScanError(path, "not a Zarr group (no group zarr.json)") from None
        except ZARR_ERRORS as exc:
            raise ScanError(path, f"not a readable Zarr group ({exc})") from None

    def _poll(self) -> StreamProgress:
        with storage_errors(self.path, "unreadable Zarr metadata", ZARR_ERRORS):
            root = self._open_root(self.path)
            attrs = root.attrs.asdict()  # committed count and completion from one document
            self._frames = root[self._frames_path]
            self._translation = root[self._translation_path]
        available = min(self._frames.shape[0], self._translation.shape[0])
        if cxi.ZARR_COMMITTED_ATTR not in attrs:  # a foreign group: finished by definition
            return StreamProgress(available, True)
        return committed_progress(
            self.path,
            attrs[cxi.ZARR_COMMITTED_ATTR],
            attrs.get(cxi.ZARR_COMPLETE_ATTR, False),
            available,
        )

    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        for rows in self._stored:
            rows.require(stop)
        return self._frames[start:stop], self._translation[start:stop]

    def _read_sorted(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for rows in self._stored:
            rows.require(int(indices[-1]) + 1)
        return self._frames.oindex[indices], self._translation.oindex[indices]

    def label_in_file(self) -> ObjectImage | None:
        with storage_errors(self.path, "object image unreadable", ZARR_ERRORS):
            root = self._open_root(self.path)
            return read_object_image_from(root, self.path) if has_object_image(root) else None

    def close(self) -> None:
        self._store.close()
