"""Logging with levels and progress bars that do not garble each other.

One logger tree under ``ptycl``; under MPI only rank 0 logs at INFO unless asked, the others
at WARNING, so a 4-rank job prints one story instead of four.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("ptycl")


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(level: str = "INFO", rank: int = 0, label: str | None = None) -> None:
    """``label``: a name for this process's lines, when several processes share a terminal
    (the strategies of ``ptycl bench continual --jobs``)."""
    handler = _TqdmHandler()
    prefix = f"[{label}] " if label else f"[rank {rank}] " if rank else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s {prefix}%(message)s", "%H:%M:%S")
    )
    root = logging.getLogger("ptycl")
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else max(logging.getLevelName(level), logging.WARNING))
    root.propagate = False


def progress(items: Iterable[T], desc: str, total: int | None = None, rank: int = 0) -> Iterator[T]:
    """A progress bar on rank 0 when stderr is a terminal (or PTYCL_PROGRESS=1)."""
    yield from progress_bar(desc, total, rank, items)


def progress_bar(
    desc: str, total: int | None, rank: int = 0, items: Iterable[T] | None = None
) -> tqdm:
    """The bar ``progress`` shows, to advance by hand (``.update()``, ``.set_postfix()``)."""
    show = rank == 0 and (sys.stderr.isatty() or os.environ.get("PTYCL_PROGRESS") == "1")
    return tqdm(items, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True)
