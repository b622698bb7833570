"""Outputs written all or nothing, and one line when they cannot be written.

Each file a run writes (metrics, error matrices, plots, the ledger, the status, the
quarantine list, reconstructions) goes to a hidden temporary file beside its target, is
fsynced, and is renamed over the target: a reader, or a run killed mid-write, finds the
previous version whole or the new one whole. A write that fails (a full disk, a quota,
permissions) removes the temporary and raises OutputError naming the output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptycl.errors import OutputError


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to, renamed over ``path`` once the
    block ends and the file is synced. It keeps the suffix (writers pick formats by it)."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    with replacing(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def prepare_output_dir(path: Path, what: str = "the run's outputs") -> Path:
    """Create an output directory and prove it writable before any work is done: a run that
    could not keep its outputs says so in one line at its start (a read-only mount, a path
    under /proc, an existing file), not after hours of training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise OutputError(path, f"cannot write {what} here ({exc.strerror or exc})") from None
    return path


def require_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Refuse to start writing ``what`` where it cannot fit: a file system filled up in the
    middle of an HDF5 write leaves the library in states it does not always survive."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OutputError(
            directory,
            f"{what} needs about {needed_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB are free",
        )
