"""Work a stop signal may cut short: reading a file the watcher does not trust yet.

Signals reach Python between bytecodes, so the watcher's handler runs within moments even
while a hostile file is being checked; but it only sets a flag, which the loop looks at
between files. Checking one file is bounded (``ptycl.io.hdf5_walk``), yet may take seconds,
and a batch scheduler's SIGTERM gives a job little time. Inside ``section()`` the handler
raises ``StopRequested`` instead, abandoning the read at once; the watcher then stops as if
the signal had come between two loops (the file is read again after ``--resume``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class StopRequested(BaseException):
    """A stop signal arrived during a read that may be abandoned. A BaseException, so that
    the readers' nets for what a file raises (``except Exception``) let it through."""


class Interruptible:
    def __init__(self) -> None:
        self.active = False

    @contextmanager
    def section(self) -> Iterator[None]:
        """Reads inside may be abandoned by ``interrupt()`` (from a signal handler)."""
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def interrupt(self) -> None:
        """From a signal handler: abandon the read under way, if one may be."""
        if self.active:
            self.active = False  # once: the read's own clean-up is not cut short again
            raise StopRequested
