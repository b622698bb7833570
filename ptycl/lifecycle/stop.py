"""SIGINT, SIGTERM and SIGUSR1 (a batch scheduler's warning before a time limit) as a request to
stop at the next step boundary, not an exception in the middle of one.

One exception to that: reading a file that is not trusted yet. Checking one file is bounded
(``ptycl.io.hdf5_walk``) but may take seconds, and a scheduler's SIGTERM gives a job little
time, so inside ``abandonable()`` a stop signal raises ``StopRequested`` at once instead; the
caller then stops as if the signal had come between two files (and reads the file again after
a resume).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequested(BaseException):
    """A stop signal arrived inside ``abandonable()``. A BaseException, so that the readers'
    nets for what a hostile file raises (``except Exception``) let it through."""


class StopSignals:
    """Inside ``with``: the stop signals set ``signalled`` (the signal's name) and nothing else;
    the previous handlers come back on leaving."""

    def __init__(self) -> None:
        self.signalled: str | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._abandonable = False

    def _handle(self, signum: int, _: FrameType | None) -> None:
        self.signalled = signal.Signals(signum).name
        if self._abandonable:
            self._abandonable = False  # once: the read's own clean-up is not cut short again
            raise StopRequested(self.signalled)

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        """Work inside that a stop signal abandons at once, raising ``StopRequested``."""
        self._abandonable = True
        try:
            yield
        finally:
            self._abandonable = False

    def __enter__(self) -> Self:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
