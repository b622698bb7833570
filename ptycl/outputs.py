"""Outputs written all or nothing, and one line when they cannot be written.

Each file a run writes (metrics, error matrices, plots, the ledger, the status, the
quarantine list, reconstructions) goes to a hidden temporary file beside its target, is
fsynced, and is renamed over the target: a reader, or a run killed mid-write, finds the
previous version whole or the new one whole. A write that fails (a full disk, a quota,
permissions) removes the temporary and raises OutputError naming the output.
"""

from __future__ import annotations

import os
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
