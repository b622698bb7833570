"""Discover scans and labels in a watched directory with watchdog: inotify, or polling.

Design notes: docs/design.md.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ptycl.io.object_image import LABEL_SUFFIX
from ptycl.io.source import NameKind, name_kind

log = logging.getLogger("ptycl.stream")

# inotify is asked for these only; in particular not for "modified", which a SWMR writer
# would raise for every frame.
EVENTS = [
    FileCreatedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]


def scan_stem_of_label(name: str) -> str:
    """``scan0003_siemens.label.h5`` -> ``scan0003_siemens``."""
    return name[: -len(LABEL_SUFFIX)]


@dataclass(frozen=True)
class Sighting:
    """Something happened to a scan or label name in the watched directory."""

    path: Path
    kind: NameKind
    settled: bool  # a rename into place or a close after writing: the writer is done with it
    gone: bool = False  # deleted, or renamed away


class _Handler(FileSystemEventHandler):
    def __init__(self, directory: Path, events: queue.SimpleQueue) -> None:
        self.directory = directory
        self.events = events

    def _put(self, raw: str | bytes, settled: bool, gone: bool = False) -> None:
        path = Path(os.fsdecode(raw))
        if path.parent != self.directory:  # not a direct entry (inside a Zarr group, ...)
            return
        kind = name_kind(path.name)
        if kind is not None:
            self.events.put(Sighting(path, kind, settled, gone))

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind == "moved":
            self._put(event.src_path, settled=False, gone=True)
            self._put(event.dest_path, settled=True)
        elif kind == "closed":
            self._put(event.src_path, settled=True)
        elif kind == "created":
            self._put(event.src_path, settled=False)
        elif kind == "deleted":
            self._put(event.src_path, settled=False, gone=True)


class ScanDiscovery:
    """Watch ``directory``; ``start()`` and ``poll()`` return what was seen since.

    The directory may go away while it is watched (an unmounted or remounted file system, a
    directory removed and made again): watchdog's observers then stop seeing anything, for
    good. ``poll()`` notices, says so once in the log, and once the directory is back watches
    it afresh, reporting everything in it as new (the watch loop ignores what it knows).
    """

    def __init__(self, directory: Path, polling: bool = False, poll_interval_s: float = 0.5):
        self.directory = Path(directory).resolve()
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self._events: queue.SimpleQueue[Sighting] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of what is watched

    @property
    def mode(self) -> str:
        return "polling" if self.polling else "inotify"

    def start(self) -> list[Sighting]:
        """Start watching, then list what is already there (watching first, so nothing
        written in between is missed; a name reported twice is the loop's to ignore)."""
        self._identity = _identity(self.directory)
        self._observer = (
            PollingObserver(timeout=self.poll_interval_s) if self.polling else Observer()
        )
        handler = _Handler(self.directory, self._events)
        event_filter = None if self.polling else EVENTS
        self._observer.schedule(
            handler, str(self.directory), recursive=False, event_filter=event_filter
        )
        self._observer.start()
        existing = []
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
            kind = name_kind(entry.name)
            if kind is not None:
                existing.append(Sighting(Path(entry.path), kind, settled=False))
        return existing + self._drain()

    def poll(self) -> list[Sighting]:
        """What happened since the last call; after the directory came back, all it holds."""
        found = self._drain()
        identity = _identity(self.directory)
        if identity == self._identity:
            return found
        if self._identity is not None:  # it just went away (or was replaced)
            self.stop()
            if identity is None:
                log.warning("%s disappeared; waiting for it to come back", self.directory)
                self._identity = None
                return found
        try:
            sightings = self.start()
        except FileNotFoundError:  # gone again already: try on the next poll
            self.stop()
            self._identity = None
            return found
        log.warning("%s is there again; watching it (%d entries)", self.directory, len(sightings))
        return found + sightings

    def _drain(self) -> list[Sighting]:
        found = []
        while True:
            try:
                found.append(self._events.get_nowait())
            except queue.Empty:
                return found

    def stop(self) -> None:
        if self._observer is None:
            return
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)
        self._observer = None


def _identity(directory: Path) -> tuple[int, int] | None:
    """Which directory sits at ``directory`` now (None: none)."""
    try:
        info = directory.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def signature(path: Path) -> tuple[int, int] | None:
    """What changes when something is written to ``path``: (size, newest mtime) of a file,
    or (entries, newest mtime) over a Zarr directory's tree; None if it is gone."""
    try:
        if not path.is_dir():
            info = path.stat()
            return info.st_size, info.st_mtime_ns
        entries, newest = 0, path.stat().st_mtime_ns
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                except FileNotFoundError:
                    continue
                entries += 1
        return entries, newest
    except FileNotFoundError:
        return None


class Candidate:
    """A name that may hold a scan (or label) the watcher has not started on yet."""

    def __init__(self, path: Path, now: float) -> None:
        self.path = path
        self.settled = False
        self.first_seen = now
        self.last_change = now
        self.next_try = now
        self._signature = signature(path)

    def note(self, sighting: Sighting, now: float) -> None:
        self.settled = self.settled or sighting.settled
        self.update(now)

    def update(self, now: float) -> None:
        """Re-read the signature; a change restarts the settling clock."""
        current = signature(self.path)
        if current != self._signature:
            self._signature = current
            self.last_change = now

    @property
    def exists(self) -> bool:
        return self._signature is not None

    def unchanged_for(self, now: float) -> float:
        return now - self.last_change
