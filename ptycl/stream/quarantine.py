"""Quarantine: a scan (or label) the watcher cannot use is set aside with a one-line reason.

The file (or Zarr directory) is moved into ``DIR/quarantine/`` together with its label file,
so an operator sees at a glance what was refused, and a line is appended to the run's
``quarantine.tsv`` (under ``run.output_dir``): the time, the name, where it went, the reason.
Where the move is not allowed (a read-only beamline directory), the file stays in place and
the line says so; the ledger keeps the watcher from ever looking at it again either way.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ptycl.errors import one_line, printable
from ptycl.io.object_image import label_path_for
from ptycl.outputs import write_text

log = logging.getLogger("ptycl.stream")

QUARANTINE_DIR = "quarantine"
QUARANTINE_LIST = "quarantine.tsv"


def _free_name(directory: Path, name: str) -> Path:
    target = directory / name
    n = 1
    while target.exists():
        target = directory / f"{name}.{n}"
        n += 1
    return target


def quarantine(path: Path, reason: str, list_path: Path) -> Path | None:
    """Set ``path`` aside (its label too when it is a scan); return where it went (None if
    it stayed in place). ``reason`` is squeezed onto one line."""
    reason = one_line(reason)
    moved_to: Path | None = None
    if path.exists():
        directory = path.parent / QUARANTINE_DIR
        try:
            directory.mkdir(exist_ok=True)
            moved_to = _free_name(directory, path.name)
            os.rename(path, moved_to)
            label = label_path_for(path)
            if label != path and label.exists():
                os.rename(label, _free_name(directory, label.name))
        except OSError as exc:
            log.warning(
                "cannot move %s into %s/ (%s); leaving it in place", printable(path), directory, exc
            )
            moved_to = None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    # Names escaped: a newline or a tab in a file name cannot split a row or forge one.
    line = f"{stamp}\t{printable(path.name)}\t{printable(moved_to or 'left in place')}\t{reason}\n"
    # Rewritten whole rather than appended to: a full disk cannot leave half a line.
    earlier = list_path.read_text() if list_path.exists() else ""
    write_text(list_path, earlier + line)
    log.error("quarantined %s: %s", printable(path.name), reason)
    return moved_to
