"""The watcher's ledger: what became of every scan it has opened, and how far it got.

Design notes: docs/design.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ptycl.outputs import write_text

ScanState = Literal["seen", "training", "trained", "reconstructed", "quarantined"]
STATES: tuple[ScanState, ...] = ("seen", "training", "trained", "reconstructed", "quarantined")
TERMINAL: frozenset[str] = frozenset({"trained", "quarantined"})
LEDGER_VERSION = 1

# state -> states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    "seen": frozenset({"training", "reconstructed", "quarantined"}),
    "training": frozenset({"trained", "quarantined"}),
    "reconstructed": frozenset({"training", "quarantined"}),
    "trained": frozenset(),
    "quarantined": frozenset(),
}


class LedgerError(ValueError):
    """A state change the ledger does not allow (a bug, or a ledger from another run)."""


@dataclass
class ScanRecord:
    name: str  # file (or Zarr directory) name inside the watched directory
    scan_id: str = ""
    state: ScanState = "seen"
    task: int | None = None  # the trainer's scan index, once training on it started
    frames_read: int = 0  # committed frames read so far
    frames_total: int | None = None  # set once the writer marked the scan complete
    segments_trained: int = 0
    frames_trained: int = 0  # frames of the trained segments (held-out ones included)
    steps: int = 0  # optimiser steps taken on its segments
    eval_seconds: float = 0.0  # wall time of the error-matrix row after it (rank 0's)
    label: str | None = None  # where the label came from: "in_scan" or the label file's name
    reason: str | None = None  # quarantine reason, one line
    reconstruction: str | None = None  # path of the reconstruction written for it
    first_seen: float = field(default_factory=time.time)  # Unix time
    finished: float | None = None  # Unix time it reached trained/reconstructed/quarantined

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class Ledger:
    segment_frames: int
    scans: dict[str, ScanRecord] = field(default_factory=dict)
    in_progress: tuple[str, int] | None = None  # (scan name, segment index)
    frame_shape: tuple[int, int] | None = None  # detector frame shape every scan must have
    next_task: int = 0
    evaluated: list[str] = field(default_factory=list)  # trained scans, in error-matrix order

    def record(self, name: str) -> ScanRecord | None:
        return self.scans.get(name)

    def add(self, name: str, scan_id: str = "") -> ScanRecord:
        if name in self.scans:
            raise LedgerError(f"{name} is already in the ledger ({self.scans[name].state})")
        record = ScanRecord(name=name, scan_id=scan_id)
        self.scans[name] = record
        return record

    def move(self, name: str, state: ScanState, reason: str | None = None) -> ScanRecord:
        """Change a scan's state, refusing moves the state diagram does not have."""
        record = self.scans[name]
        if state not in TRANSITIONS[record.state]:
            raise LedgerError(f"{name}: cannot go from {record.state} to {state}")
        record.state = state
        if state == "training" and record.task is None:
            record.task = self.next_task
            self.next_task += 1
        if state == "quarantined":
            record.reason = reason
            if self.in_progress is not None and self.in_progress[0] == name:
                self.in_progress = None
        if state in ("trained", "reconstructed", "quarantined"):
            record.finished = time.time()
        if state == "trained":
            self.evaluated.append(name)
        return record

    def quarantine(self, name: str, reason: str) -> ScanRecord:
        """Quarantine a scan, adding it first if the watcher never managed to open it."""
        if name not in self.scans:
            self.add(name)
        return self.move(name, "quarantined", reason)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for record in self.scans.values():
            counts[record.state] += 1
        return counts

    # -- persistence ------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain values only (str, int, float, bool, None, lists, dicts): safe for
        ``torch.load(weights_only=True)`` and for JSON."""
        return {
            "version": LEDGER_VERSION,
            "segment_frames": self.segment_frames,
            "in_progress": None if self.in_progress is None else list(self.in_progress),
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "next_task": self.next_task,
            "evaluated": list(self.evaluated),
            "scans": [asdict(record) for record in self.scans.values()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Ledger:
        if state.get("version") != LEDGER_VERSION:
            raise LedgerError(f"ledger version {state.get('version')!r}, expected {LEDGER_VERSION}")
        known = {f.name for f in fields(ScanRecord)}
        scans: dict[str, ScanRecord] = {}
        for entry in state["scans"]:
            record = ScanRecord(**{k: v for k, v in entry.items() if k in known})
            if record.state not in STATES:
                raise LedgerError(f"{record.name}: unknown state {record.state!r}")
            scans[record.name] = record
        in_progress = state["in_progress"]
        frame_shape = state["frame_shape"]
        return cls(
            segment_frames=int(state["segment_frames"]),
            scans=scans,
            in_progress=None if in_progress is None else (str(in_progress[0]), int(in_progress[1])),
            frame_shape=None if frame_shape is None else (int(frame_shape[0]), int(frame_shape[1])),
            next_task=int(state["next_task"]),
            evaluated=[str(name) for name in state["evaluated"]],
        )

    def write_json(self, path: Path) -> Path:
        """Write the ledger as JSON atomically: a temporary file in the same directory,
        fsynced, renamed over ``path``; a crash mid-write leaves the previous version."""
        return write_json_atomic(path, self.to_state())

    @classmethod
    def read_json(cls, path: Path) -> Ledger:
        return cls.from_state(json.loads(Path(path).read_text()))


def write_json_atomic(path: Path, payload: Any) -> Path:
    """JSON to ``path`` through a fsynced temporary file and a rename (all or nothing;
    ``ptycl.outputs``)."""
    text = json.dumps(payload, indent=1, allow_nan=False)  # fails before touching the disk
    return write_text(Path(path), text)
