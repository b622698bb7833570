"""The reading and writing contracts every scan format keeps: ``ScanSource`` and
``StreamingScanWriter``, with the shape and progress checks they share.

A ``ScanSource`` reads only committed frames, whose count the writer publishes after each
frame, and says the scan is complete only when the writer has said so. The backends
(``hdf5_scan``, ``zarr_scan``) subclass these; ``ptycl.io.source`` picks one by the path.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from ptycl.errors import ScanError
from ptycl.io.cxi import positions_from_translation, translation_from_positions
from ptycl.io.guards import (
    HDF5_ERRORS,
    MAX_READ_BYTES,
    ZARR_ERRORS,
    check_frame_shape,
    check_frames,
)
from ptycl.io.object_image import label_path_for, read_object_image
from ptycl.io.records import FrameBatch, ObjectImage, ScanMetadata


class Closes:
    """Closed on leaving ``with``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class StreamProgress:
    """One consistent look at a scan being written."""

    committed_frames: int  # frames (and their positions) a reader may read now
    complete: bool  # the writer has finished; committed_frames is final


class ScanSource(Closes, ABC):
    """One scan, readable while it grows. Use as a context manager, or call ``close()``."""

    def __init__(self, path: Path, metadata: ScanMetadata, frame_dtype: np.dtype) -> None:
        self.path = path
        self.metadata = metadata
        self.frame_dtype = frame_dtype
        self._committed = 0  # the last count seen; reads below it need no refresh

    # -- what a backend supplies --------------------------------------------------------
    @abstractmethod
    def _poll(self) -> StreamProgress:
        """Refresh from storage. Must read the completion flag before the committed count
        (a writer sets them in the opposite order), so complete=True means the count is final."""

    @abstractmethod
    def _read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [start, stop) and their CXI translation rows."""

    @abstractmethod
    def _read_sorted(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames at strictly increasing ``indices`` and their CXI translation rows."""

    @abstractmethod
    def label_in_file(self) -> ObjectImage | None:
        """The object image stored in the scan file itself, if any."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the public reader ----------------------------------------------------------------
    def progress(self) -> StreamProgress:
        state = self._poll()
        self._committed = state.committed_frames
        return state

    def n_committed(self) -> int:
        return self.progress().committed_frames

    def is_complete(self) -> bool:
        return self.progress().complete

    def frames_per_read(self, wanted: int) -> int:
        """``wanted``, or fewer if that many frames would take more than MAX_READ_BYTES:
        memory stays bounded whatever frame size a file declares."""
        height, width = self.metadata.geometry.frame_shape
        frame_bytes = height * width * self.frame_dtype.itemsize
        return max(1, min(wanted, MAX_READ_BYTES // frame_bytes))

    def read(self, indices: Sequence[int] | np.ndarray) -> FrameBatch:
        """Frames at ``indices`` (any order, repeats allowed), all of them committed."""
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            return self._batch(wanted, *self._read_range(0, 0))
        last = int(wanted.max())
        if last >= self._committed:
            self.n_committed()
        if wanted.min() < 0 or last >= self._committed:
            raise IndexError(
                f"{self.path}: frames {wanted.min()}..{last} asked, {self._committed} committed"
            )
        with self._reading():
            if np.array_equal(wanted, np.arange(wanted[0], last + 1)):
                frames, translation = self._read_range(int(wanted[0]), last + 1)
            else:
                unique, inverse = np.unique(wanted, return_inverse=True)
                frames, translation = self._read_sorted(unique)
                frames, translation = frames[inverse], translation[inverse]
        return self._batch(wanted, frames, translation)

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        follow: bool = False,
        poll_interval_s: float = 0.05,
        stall_timeout_s: float | None = None,
    ) -> Iterator[FrameBatch]:
        """Consecutive frames from ``start`` in batches of ``batch_size`` (the last may be short;
        all are, if ``batch_size`` frames would exceed ``frames_per_read``).

        ``follow=False`` reads what is committed now. ``follow=True`` keeps polling until the
        writer marks the scan complete; it yields only full batches until then, and raises
        ScanError when no frame arrives for ``stall_timeout_s`` seconds.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_size = self.frames_per_read(batch_size)
        position = start
        seen, last_arrival = -1, time.monotonic()
        while True:
            state = self.progress()
            if state.committed_frames != seen:
                seen, last_arrival = state.committed_frames, time.monotonic()
            finished = state.complete or not follow
            while position < state.committed_frames and (
                state.committed_frames - position >= batch_size or finished
            ):
                stop = min(position + batch_size, state.committed_frames)
                yield self.read(np.arange(position, stop))
                position = stop
            if finished:
                return
            if stall_timeout_s is not None and time.monotonic() - last_arrival > stall_timeout_s:
                raise ScanError(
                    self.path,
                    f"stalled: no new frame for {stall_timeout_s:g} s after {state.committed_frames} "
                    "frames and the writer never marked the scan complete",
                )
            time.sleep(poll_interval_s)

    def label(self) -> ObjectImage | None:
        """The object image in the scan file, else in ``<stem>.label.h5`` beside it, else None."""
        in_file = self.label_in_file()
        if in_file is not None:
            return in_file
        separate = label_path_for(self.path)
        return read_object_image(separate) if separate.exists() else None

    # -- shared checks ------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Storage errors while reading frames (a torn chunk, a cut file) become ScanErrors."""
        try:
            yield
        except (*HDF5_ERRORS, *ZARR_ERRORS) as exc:
            raise ScanError(
                self.path, f"frames unreadable, file truncated or corrupt ({exc})"
            ) from None

    def _batch(
        self, indices: np.ndarray, frames: np.ndarray, translation: np.ndarray
    ) -> FrameBatch:
        check_frames(frames, self.path, indices)
        positions_m = positions_from_translation(translation)
        if not np.isfinite(positions_m).all():
            bad = int(indices[np.argmax(~np.isfinite(positions_m).all(axis=1))])
            raise ScanError(self.path, f"translation of frame {bad} is not finite")
        return FrameBatch(
            scan_id=self.metadata.scan_id, indices=indices, frames=frames, positions_m=positions_m
        )


def check_array_shapes(
    path: Path,
    frames_dtype: np.dtype,
    frames_shape: tuple[int, ...],
    translation_dtype: np.dtype,
    translation_shape: tuple[int, ...],
) -> tuple[int, int]:
    """The frame shape (H, W), once the stored arrays are known to be frames and translations
    (checked from what the file declares, before anything is read)."""
    if frames_dtype.kind not in "iuf":
        raise ScanError(path, f"detector data must be numbers, found {frames_dtype}")
    if len(frames_shape) != 3:
        raise ScanError(path, f"detector data must be (N, H, W), found shape {tuple(frames_shape)}")
    if translation_dtype.kind not in "iuf":
        raise ScanError(path, f"translations must be numbers, found {translation_dtype}")
    if len(translation_shape) != 2 or translation_shape[1] < 2:
        raise ScanError(
            path, f"translations must be (N, 3), found shape {tuple(translation_shape)}"
        )
    frame_shape = int(frames_shape[1]), int(frames_shape[2])
    check_frame_shape(path, frame_shape)
    return frame_shape


def committed_progress(
    path: Path, committed: object, complete: object, available: int
) -> StreamProgress:
    """The writer's committed count and completion flag, checked: a count that is not a
    non-negative integer, or a final count the file does not hold, is a lie."""
    if isinstance(committed, bool) or not isinstance(committed, int | np.integer):
        raise ScanError(path, f"committed frame count must be an integer, found {committed!r}")
    if committed < 0:
        raise ScanError(path, f"committed frame count is negative ({committed})")
    if not isinstance(complete, bool):
        raise ScanError(path, f"completion flag must be true or false, found {complete!r}")
    if complete and committed > available:
        raise ScanError(
            path, f"the writer committed {committed} frames but the file holds {available}"
        )
    # An unfinished scan reads as far as both its count and its data go (a writer stores
    # frames before it counts them; a count ahead of them stalls until the data arrive).
    return StreamProgress(min(int(committed), available), complete)


def check_scan_shape(
    path: Path,
    frame_shape: tuple[int, int],
    n_frames: int,
    n_translations: int,
    complete: bool,
    expected_frame_shape: tuple[int, int] | None,
) -> None:
    """The run's frame shape, and one translation per frame once the scan is finished."""
    if expected_frame_shape is not None and tuple(frame_shape) != tuple(expected_frame_shape):
        raise ScanError(
            path,
            f"frames are {frame_shape[0]}x{frame_shape[1]}, this run expects "
            f"{expected_frame_shape[0]}x{expected_frame_shape[1]}",
        )
    if complete and n_frames != n_translations:
        raise ScanError(path, f"{n_frames} frames but {n_translations} translations")


class StreamingScanWriter(Closes, ABC):
    """Writes one scan frame by frame so that readers in other processes can follow it.

    The file appears under its name only once every dataset exists and it is readable; each
    frame's data and position are stored before the committed count moves past it; the scan
    is complete only after ``mark_complete()``. Leaving the context (or ``close()``) without
    it leaves an incomplete scan, which a following reader reports as stalled.
    """

    def __init__(self, path: Path, metadata: ScanMetadata, frame_dtype: np.dtype) -> None:
        self.path = path
        self.metadata = metadata
        self.frame_dtype = frame_dtype
        self.n_committed = 0

    @abstractmethod
    def _append(self, frames: np.ndarray, translation: np.ndarray) -> None:
        """Store frames and translation rows at n_committed..; then publish the new count."""

    @abstractmethod
    def mark_complete(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def write_frame(self, frame: np.ndarray, position_m: Sequence[float] | np.ndarray) -> None:
        self.write_frames(np.asarray(frame)[None], np.asarray(position_m, dtype=np.float64)[None])

    def write_frames(self, frames: np.ndarray, positions_m: np.ndarray) -> None:
        """Append frames (n, H, W) with their (n, 2) (y, x) probe positions in metres."""
        frames = np.asarray(frames)
        if frames.shape[1:] != self.metadata.geometry.frame_shape or len(positions_m) != len(
            frames
        ):
            raise ValueError(
                f"{self.path}: frames {frames.shape} / positions {np.shape(positions_m)} do not fit "
                f"frame shape {self.metadata.geometry.frame_shape}"
            )
        if not np.can_cast(frames.dtype, self.frame_dtype, "safe"):
            raise ValueError(
                f"{self.path}: {frames.dtype} frames do not fit a {self.frame_dtype} scan"
            )
        self._append(
            frames.astype(self.frame_dtype, copy=False), translation_from_positions(positions_m)
        )
        self.n_committed += len(frames)
