"""SIGINT, SIGTERM and SIGUSR1 (a batch scheduler's warning before a time limit) as a request to
stop at the next step boundary, not an exception in the middle of one."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Inside ``with``: the stop signals set ``signalled`` (the signal's name) and nothing else;
    the previous handlers come back on leaving."""

    def __init__(self) -> None:
        self.signalled: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, _: FrameType | None) -> None:
        self.signalled = signal.Signals(signum).name

    def __enter__(self) -> Self:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
