"""The watcher's live status: one line (scans by state, frames/s, store fill, latest errors).

On a terminal (or with PTYCL_PROGRESS=1) the line is redrawn in place under the log, through
tqdm like ptycl's progress bars, so log records and the line do not garble each other;
otherwise it is logged at INFO every ``status_every_s``. Either way the same numbers go to
``status.json`` in the run directory (atomically), for dashboards and scripts.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ptycl.stream.ledger import STATES, write_json_atomic

log = logging.getLogger("ptycl.stream")


@dataclass
class WatchCounters:
    """Totals the watch loop keeps; the status line turns them into rates."""

    frames_read: int = 0  # frames read from scans (all ranks' files are the same files)
    frames_trained: int = 0  # frames of segments trained
    frames_reconstructed: int = 0
    recon_seconds: float = 0.0  # wall time inferring, stitching and writing reconstructions
    train_seconds: float = 0.0  # wall time inside training segments
    read_seconds: float = 0.0  # wall time reading and preparing frames
    eval_seconds: float = 0.0  # wall time filling error-matrix rows (rank 0)
    steps: int = 0


@dataclass
class StatusSnapshot:
    mode: str
    scans: dict[str, int]  # state -> count
    following: int  # scans open and still being written
    backlog_frames: int  # frames read of labelled scans, not yet trained
    store_held: int | None
    store_capacity: int | None
    latest_scan: str | None
    latest_phase_mae: float | None  # of the newest trained scan, just after training on it
    # over the scans evaluated after the newest (it and the evaluation set, at most
    # watch.evaluation_scans earlier scans; ``ptycl.stream.evaluation_set``), those with a value
    mean_phase_mae: float | None
    counters: WatchCounters = field(default_factory=WatchCounters)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


class StatusLine:
    def __init__(self, every_s: float, path: Path | None, rank: int = 0) -> None:
        self.every_s = every_s
        self.path = path
        self.rank = rank
        self.started = time.monotonic()
        self._last_emit = self.started
        self._last_counters = WatchCounters()
        show = rank == 0 and (sys.stderr.isatty() or os.environ.get("PTYCL_PROGRESS") == "1")
        self._bar = (
            tqdm(total=0, bar_format="{desc}", disable=not show, leave=False) if show else None
        )

    def due(self) -> bool:
        return time.monotonic() - self._last_emit >= self.every_s

    def emit(self, snapshot: StatusSnapshot) -> str:
        """Show and record ``snapshot``; return the line."""
        now = time.monotonic()
        interval = max(now - self._last_emit, 1e-9)
        c, last = snapshot.counters, self._last_counters
        read_rate = (c.frames_read - last.frames_read) / interval
        train_rate = (c.frames_trained - last.frames_trained) / interval
        # what training sustains when busy: frames per second of training wall time
        train_capacity = c.frames_trained / c.train_seconds if c.train_seconds > 0 else None
        self._last_emit, self._last_counters = now, WatchCounters(**asdict(c))
        counts = " ".join(
            f"{snapshot.scans.get(s, 0)} {s}" for s in STATES if snapshot.scans.get(s)
        )
        store = ""
        if snapshot.store_capacity:
            held = snapshot.store_held or 0
            store = f" | store {held}/{snapshot.store_capacity} ({100 * held / snapshot.store_capacity:.0f}%)"
        errors = ""
        if _finite(snapshot.latest_phase_mae) is not None:
            errors = (
                f" | phase MAE {snapshot.latest_scan} {snapshot.latest_phase_mae:.3f}, "
                f"mean {snapshot.mean_phase_mae:.3f} rad"
            )
        line = (
            f"watch ({snapshot.mode}): {sum(snapshot.scans.values())} scans"
            f"{' (' + counts + ')' if counts else ''}, {snapshot.following} following"
            f" | in {read_rate:.0f} fr/s, trained {train_rate:.0f} fr/s"
            f"{f' (capacity {train_capacity:.0f} fr/s)' if train_capacity else ''}, "
            f"backlog {snapshot.backlog_frames} fr{store}{errors}"
        )
        if self._bar is not None:
            self._bar.set_description_str(line, refresh=True)
        elif self.rank == 0:
            log.info("%s", line)
        if self.path is not None and self.rank == 0:
            payload = asdict(snapshot)
            payload["latest_phase_mae"] = _finite(snapshot.latest_phase_mae)
            payload["mean_phase_mae"] = _finite(snapshot.mean_phase_mae)
            payload.update(
                {
                    "time": time.time(),
                    "uptime_s": now - self.started,
                    "frames_per_s_in": read_rate,
                    "frames_per_s_trained": train_rate,
                    "train_capacity_frames_per_s": train_capacity,
                    "line": line,
                }
            )
            write_json_atomic(self.path, payload)
        return line

    def close(self) -> None:
        """Take the live line down; later lines are logged."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
