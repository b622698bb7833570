"""One scan opened for the model: its frame size checked once, its frames read prepared.

The one way ``ptycl train`` (``load_scan``), ``ptycl reconstruct`` (``infer_scan``) and
``ptycl watch`` (``ScanFollower``) turn a scan file into model inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ptycl.config import PrepSettings
from ptycl.errors import ScanError
from ptycl.io.base import Closes, ScanSource
from ptycl.io.source import open_scan
from ptycl.prep.frames import input_size_problem, prepare_frames


class UnusableScan(ScanError):
    """A scan that opened but can never be used (wrong shape, no frames): a watcher
    quarantines it now rather than wait for it to become readable."""


class PreparedScanReader(Closes):
    """``open_scan`` and ``prepare_frames`` together; raises ScanError (``UnusableScan`` for
    frames this run cannot use) naming the file."""

    def __init__(
        self,
        path: str | Path,
        prep: PrepSettings,
        expected_frame_shape: tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.prep = prep
        self.source: ScanSource = open_scan(self.path)
        try:
            self.metadata = self.source.metadata
            frame_shape = self.metadata.geometry.frame_shape
            if expected_frame_shape is not None and frame_shape != tuple(expected_frame_shape):
                raise UnusableScan(
                    self.path,
                    f"shape mismatch: frames are {frame_shape[0]}x{frame_shape[1]}, "
                    f"this run's scans are {expected_frame_shape[0]}x{expected_frame_shape[1]}",
                )
            if problem := input_size_problem(frame_shape, prep.input_size):
                raise UnusableScan(self.path, problem)
        except BaseException:
            self.source.close()
            raise

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """(n, H, W) detector frames -> (n, S, S) float32 model inputs."""
        try:
            return prepare_frames(
                frames, self.prep.input_size, self.prep.resize, mask=self.metadata.mask
            )
        except ValueError as exc:
            raise ScanError(self.path, f"frames cannot be prepared: {exc}") from None

    def batches(self, batch_frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The committed frames in order: (prepared (n, S, S), positions (n, 2) m) batches."""
        for batch in self.source.batches(batch_frames):
            yield self.prepare(batch.frames), batch.positions_m

    def close(self) -> None:
        self.source.close()
