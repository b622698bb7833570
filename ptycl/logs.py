"""Logging with levels and progress reports that do not garble each other.

One logger tree under ``ptycl``; under MPI only rank 0 logs at INFO unless asked, the others
at WARNING, so a 4-rank job prints one story instead of four.

Long work reports its progress from rank 0 (``Progress``): a tqdm bar with the count, the
rate and the time left on a terminal; where stderr is a file (a Slurm job's log) a line every
``PTYCL_PROGRESS_EVERY_S`` seconds (60) saying the same, so a log shows the job is moving
without a line per step. ``PTYCL_PROGRESS=1`` draws bars whatever stderr is; ``=0`` reports
no progress.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("ptycl")
DEFAULT_PROGRESS_EVERY_S = 60.0
# False in a process that shares its terminal with others (``setup_logging(label=...)``: the
# strategies of ``ptycl bench continual --jobs``), whose bars would overwrite each other.
_bars_allowed = True


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
    global _bars_allowed
    _bars_allowed = label is None
    prefix = f"[{label}] " if label else f"[rank {rank}] " if rank else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s {prefix}%(message)s", "%H:%M:%S")
    )
    root = logging.getLogger("ptycl")
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else max(logging.getLevelName(level), logging.WARNING))
    root.propagate = False


class Progress:
    """Progress of one piece of long work, counted in ``unit``s up to ``total``: a bar on a
    terminal, a periodic line elsewhere, nothing on ranks other than 0 (see the module)."""

    def __init__(
        self,
        desc: str,
        total: int | None,
        *,
        unit: str = "it",
        initial: int = 0,
        rank: int = 0,
        logger: logging.Logger = log,
    ) -> None:
        self.desc, self.total, self.unit, self.count = desc, total, unit, initial
        self._logger = logger
        self._started = self._last_line = time.monotonic()
        self._initial = initial
        wanted = os.environ.get("PTYCL_PROGRESS", "")
        shown = rank == 0 and wanted != "0"
        bars = shown and _bars_allowed and (wanted == "1" or sys.stderr.isatty())
        self._bar = (
            tqdm(
                desc=desc,
                total=total,
                initial=initial,
                unit=unit,
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
            if bars
            else None
        )
        self._every_s = (
            float(os.environ.get("PTYCL_PROGRESS_EVERY_S", DEFAULT_PROGRESS_EVERY_S))
            if shown and not bars
            else None
        )

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._every_s is not None:
            now = time.monotonic()
            if now - self._last_line >= self._every_s:
                self._last_line = now
                self._logger.info("%s", self.line(now))

    def describe(self, desc: str, total: int | None = None) -> None:
        """A new description (and total, when the work turned out larger or smaller)."""
        self.desc = desc
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.set_description(desc)  # also redraws the bar

    def line(self, now: float | None = None) -> str:
        """The count, the share of the total, the time spent and an estimate of the rest."""
        elapsed = (time.monotonic() if now is None else now) - self._started
        done = self.count - self._initial
        text = f"{self.desc}: {self.count}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.count / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {tqdm.format_interval(elapsed)} elapsed"
        if self.total and done > 0:
            left = (self.total - self.count) * elapsed / done
            text += f", about {tqdm.format_interval(left)} left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def progress(
    items: Iterable[T], desc: str, total: int | None = None, rank: int = 0, unit: str = "it"
) -> Iterator[T]:
    """``items``, reporting their progress (``Progress``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(desc, total, unit=unit, rank=rank) as shown:
        for item in items:
            yield item
            shown.update()
