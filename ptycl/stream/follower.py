"""Follow one scan while it is written (``ScanFollower``) and hold what was read of it
(``ScanBuffer``): prepared frames, positions, the label once known, and from them the
training segments and the evaluation set.

Design notes: docs/design.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ptycl.config import PrepSettings
from ptycl.io.base import ScanSource
from ptycl.io.object_image import label_path_for, read_object_image
from ptycl.io.records import ObjectImage, ScanMetadata
from ptycl.prep.reader import PreparedScanReader, UnusableScan
from ptycl.prep.scan_data import PreparedLabel, ScanTensors, prepare_label, scan_tensors
from ptycl.stream.segments import holdout_rows, segment_bounds, segment_seed


class GrowingArray:
    """An (n, *shape) array that grows by appending, with amortised doubling."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self._data = np.empty((64, *shape), dtype=dtype)
        self._n = 0

    def append(self, rows: np.ndarray) -> None:
        needed = self._n + len(rows)
        if needed > len(self._data):
            grown = np.empty(
                (max(needed, 2 * len(self._data)), *self._data.shape[1:]), self._data.dtype
            )
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : needed] = rows
        self._n = needed

    def view(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self._n if stop is None else min(stop, self._n)
        return self._data[start:stop]

    def __len__(self) -> int:
        return self._n


class ScanFollower:
    """One scan file, read as it grows. ``poll()`` returns what was committed since the last
    call, prepared for the model."""

    def __init__(
        self,
        path: Path,
        prep: PrepSettings,
        expected_frame_shape: tuple[int, int] | None = None,
        max_frames_per_poll: int = 512,
    ) -> None:
        self.path = Path(path)
        self.prep = prep
        self.max_frames_per_poll = max_frames_per_poll
        self.frames_read = 0
        self.complete = False
        # Opening raises ScanError for a file that is not (yet) a readable scan.
        self._reader: PreparedScanReader | None = PreparedScanReader(
            self.path, prep, expected_frame_shape
        )
        self._source: ScanSource | None = self._reader.source
        try:
            self.metadata: ScanMetadata = self._reader.metadata
            self.frame_shape = self.metadata.geometry.frame_shape
            # A label inside the scan is written when the file is created (before any frame).
            self._label_in_file = self._source.label_in_file()
            self.looks_finished = self._source.progress().complete
        except BaseException:
            self.close()
            raise
        self.last_arrival = time.monotonic()

    @property
    def label_in_file(self) -> bool:
        return self._label_in_file is not None

    def poll(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Newly committed frames (at most ``max_frames_per_poll``, fewer of large frames:
        ``ScanSource.frames_per_read``), prepared, with their (n, 2) positions; None when
        there are none. Sets ``complete`` once the writer has marked the scan complete and
        every frame is read, and closes the file then.

        Raises ScanError for a bad frame (NaN, negative, unreadable) or position.
        """
        if self._source is None:
            return None
        state = self._source.progress()
        wanted = self._source.frames_per_read(self.max_frames_per_poll)
        stop = min(state.committed_frames, self.frames_read + wanted)
        new = None
        if stop > self.frames_read:
            batch = self._source.read(np.arange(self.frames_read, stop))
            prepared = self._reader.prepare(batch.frames)
            new = (prepared, batch.positions_m)
            self.frames_read = stop
            self.last_arrival = time.monotonic()
        if state.complete and self.frames_read == state.committed_frames:
            if self.frames_read == 0:
                raise UnusableScan(self.path, "the writer marked the scan complete with no frame")
            self.complete = True
            self.close()
        return new

    def label(self) -> tuple[ObjectImage, str] | None:
        """The scan's label and where it came from: in the scan file, else ``<stem>.label.h5``
        beside it once that exists. A label file that cannot be read raises ScanError naming
        the label file."""
        if self._label_in_file is not None:
            return self._label_in_file, "in_scan"
        return read_label_file(self.path)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = self._source = None


def read_label_file(scan_path: Path) -> tuple[ObjectImage, str] | None:
    """The label in ``<stem>.label.h5`` beside the scan and the file's name, if it exists."""
    separate = label_path_for(scan_path)
    if not separate.exists():
        return None
    return read_object_image(separate), separate.name


class ScanBuffer:
    """A followed scan's prepared frames and positions, with its label once known: the
    training segments and the evaluation set.

    Everything here is a function of the frames, the label and the run's settings (segment
    size, seeds), never of arrival times, so a resumed run rebuilds the same tensors. Under
    MPI every rank holds the same buffers (rank 0 reads the file and broadcasts).
    """

    def __init__(
        self,
        path: Path,
        metadata: ScanMetadata,
        prep: PrepSettings,
        segment_frames: int,
        run_seed: int,
    ) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.prep = prep
        self.segment_frames = segment_frames
        self.run_seed = run_seed
        size = prep.input_size
        self.inputs = GrowingArray((size, size), np.float32)
        self.positions_m = GrowingArray((2,), np.float64)
        self.complete = False
        self.truth: ObjectImage | None = None
        self.task: int | None = None
        self._label: PreparedLabel | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def append(self, inputs: np.ndarray, positions_m: np.ndarray) -> None:
        self.inputs.append(inputs)
        self.positions_m.append(positions_m)

    def set_label(self, truth: ObjectImage, task: int) -> None:
        self.truth, self.task, self._label = truth, task, None

    @property
    def labelled(self) -> bool:
        return self.truth is not None

    def _prepared_label(self) -> PreparedLabel:
        if self.truth is None or self.task is None:
            raise ValueError(f"{self.path}: no label yet")
        if self._label is None:
            # The phase reference: the area the first segment's probe positions cover.
            first = self.positions_m.view(0, self.segment_frames)
            self._label = prepare_label(self.truth, self.metadata, self.prep, first, self.path)
        return self._label

    def ready_segment(self, index: int) -> tuple[int, int] | None:
        return segment_bounds(index, self.segment_frames, len(self), self.complete)

    def segment(self, index: int) -> ScanTensors:
        """Training tensors of segment ``index`` (which must be ready); ScanError when the
        label does not cover its positions."""
        bounds = self.ready_segment(index)
        if bounds is None:
            raise ValueError(f"{self.path}: segment {index} is not ready")
        start, stop = bounds
        label = self._prepared_label()
        return scan_tensors(
            self.metadata,
            self.path,
            self.inputs.view(start, stop),
            self.positions_m.view(start, stop).copy(),
            label,
            self.prep,
            segment_seed(self.run_seed, self.task, index),
        )

    def evaluation(self) -> ScanTensors:
        """The whole finished scan; its held-out rows are the union of its segments'."""
        if not self.complete:
            raise ValueError(f"{self.path}: not complete")
        whole = scan_tensors(
            self.metadata,
            self.path,
            self.inputs.view().copy(),  # not a view: the buffer has spare room
            self.positions_m.view().copy(),
            self._prepared_label(),
            self.prep,
            seed=0,
        )
        whole.train_rows, whole.holdout_rows = holdout_rows(
            len(self), self.segment_frames, self.prep.holdout_fraction, self.run_seed, self.task
        )
        return whole
