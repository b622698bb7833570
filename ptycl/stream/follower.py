"""Follow one scan while it is written: read its committed frames as they arrive, prepare
them for the model, and cut them into training segments once its label is known.

Reading goes through ``ptycl.io.source`` and so obeys the readers' rules: only frames below
the committed count the writer publishes after each frame are read (a half-written frame is
never seen), and the scan is complete only when the writer says so. Frames are prepared
(resize, normalise) as they are read and kept in memory with their positions (a scan of 450
64² frames is 7 MB), because training segments, evaluation and a late label all need them.

One ``ScanSource`` per growing file per process (see ``ptycl.io.hdf5_scan``): the follower
closes its source as soon as the scan is complete, so the reconstruction can reopen it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ptycl.config import PrepSettings
from ptycl.errors import ScanError
from ptycl.io.object_image import label_path_for, read_object_image
from ptycl.io.records import ObjectImage, ScanMetadata
from ptycl.io.source import ScanSource, open_scan
from ptycl.prep.frames import prepare_frames
from ptycl.stream.segments import holdout_rows, segment_bounds, segment_seed
from ptycl.train.scan_data import PreparedLabel, ScanTensors, prepare_label, scan_tensors


class GrowingArray:
    """An (n, *shape) array that grows by appending, with amortised doubling."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self._data = np.empty((64, *shape), dtype=dtype)
        self._n = 0

    def append(self, rows: np.ndarray) -> None:
        needed = self._n + len(rows)
        if needed > len(self._data):
            grown = np.empty((max(needed, 2 * len(self._data)), *self._data.shape[1:]), self._data.dtype)
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
    """One scan, read as it grows. ``poll()`` reads what was committed since the last call."""

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
        self._source: ScanSource | None = open_scan(self.path, expected_frame_shape)
        try:
            self.metadata: ScanMetadata = self._source.metadata
            self.frame_shape = self.metadata.geometry.frame_shape
            if min(self.frame_shape) < prep.input_size:
                raise ScanError(
                    self.path,
                    f"frames are {self.frame_shape[0]}x{self.frame_shape[1]}, smaller than the "
                    f"model input {prep.input_size}",
                )
            # A label inside the scan is written when the file is created (before any frame).
            self._label_in_file = self._source.label_in_file()
            self.complete = self._source.progress().complete
        except BaseException:
            self.close()
            raise
        size = prep.input_size
        self.inputs = GrowingArray((size, size), np.float32)
        self.positions_m = GrowingArray((2,), np.float64)
        self.last_arrival = time.monotonic()

    @property
    def frames_read(self) -> int:
        return len(self.inputs)

    @property
    def label_in_file(self) -> bool:
        return self._label_in_file is not None

    def poll(self) -> int:
        """Read newly committed frames (at most ``max_frames_per_poll``); return how many.

        Raises ScanError for a bad frame (NaN, negative, unreadable) or a bad position.
        Once the writer has marked the scan complete and every frame is read, the file is
        closed and ``complete`` is True.
        """
        if self._source is None:
            return 0
        state = self._source.progress()
        stop = min(state.committed_frames, self.frames_read + self.max_frames_per_poll)
        new = 0
        if stop > self.frames_read:
            batch = self._source.read(np.arange(self.frames_read, stop))
            try:
                prepared = prepare_frames(
                    batch.frames, self.prep.input_size, self.prep.resize, mask=self.metadata.mask
                )
            except ValueError as exc:
                raise ScanError(self.path, f"frames cannot be prepared: {exc}") from None
            self.inputs.append(prepared)
            self.positions_m.append(batch.positions_m)
            new = len(batch)
            self.last_arrival = time.monotonic()
        if state.complete and self.frames_read == state.committed_frames:
            self.complete = True
            if self.frames_read == 0:
                raise ScanError(self.path, "the writer marked the scan complete with no frame")
            self.close()
        return new

    def read_all(self) -> None:
        """Read every frame of a finished scan (for one reopened after a restart)."""
        while self._source is not None:
            if self.poll() == 0 and not self.complete:
                raise ScanError(self.path, "not complete: cannot read it to the end now")

    def label(self) -> tuple[ObjectImage, str] | None:
        """The scan's label and where it came from: in the scan file, else ``<stem>.label.h5``
        beside it once that exists. A label file that cannot be read raises ScanError naming
        the label file."""
        if self._label_in_file is not None:
            return self._label_in_file, "in_scan"
        separate = label_path_for(self.path)
        if not separate.exists():
            return None
        return read_object_image(separate), separate.name

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


class StreamedScan:
    """A followed scan's frames with its label: training segments and the evaluation set.

    Everything here is a function of the frames, the label and the run's settings (segment
    size, seeds), never of arrival times, so a resumed run rebuilds the same tensors.
    """

    def __init__(
        self,
        follower: ScanFollower,
        truth: ObjectImage,
        prep: PrepSettings,
        segment_frames: int,
        run_seed: int,
        task: int,
    ) -> None:
        self.follower = follower
        self.truth = truth
        self.prep = prep
        self.segment_frames = segment_frames
        self.run_seed = run_seed
        self.task = task
        self._label: PreparedLabel | None = None

    def _prepared_label(self) -> PreparedLabel:
        if self._label is None:
            # The phase reference: the area the first segment's probe positions cover.
            first = self.follower.positions_m.view(0, self.segment_frames)
            self._label = prepare_label(
                self.truth, self.follower.metadata, self.prep, first, self.follower.path
            )
        return self._label

    def ready_segment(self, index: int) -> tuple[int, int] | None:
        f = self.follower
        return segment_bounds(index, self.segment_frames, f.frames_read, f.complete)

    def segment(self, index: int) -> ScanTensors:
        """Training tensors of segment ``index`` (which must be ready)."""
        bounds = self.ready_segment(index)
        if bounds is None:
            raise ValueError(f"{self.follower.path}: segment {index} is not ready")
        start, stop = bounds
        f = self.follower
        return scan_tensors(
            f.metadata,
            f.path,
            f.inputs.view(start, stop),
            f.positions_m.view(start, stop).copy(),
            self._prepared_label(),
            self.prep,
            segment_seed(self.run_seed, self.task, index),
        )

    def evaluation(self) -> ScanTensors:
        """The whole finished scan, its held-out rows the union of its segments' held-out rows."""
        f = self.follower
        if not f.complete:
            raise ValueError(f"{f.path}: not complete")
        whole = scan_tensors(
            f.metadata,
            f.path,
            f.inputs.view().copy(),  # not a view: the follower's buffer has spare room
            f.positions_m.view().copy(),
            self._prepared_label(),
            self.prep,
            seed=0,
        )
        whole.train_rows, whole.holdout_rows = holdout_rows(
            f.frames_read,
            self.segment_frames,
            self.prep.holdout_fraction,
            self.run_seed,
            self.task,
        )
        return whole

    def support(self) -> np.ndarray:
        return self._prepared_label().support
