"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (no
pickled objects), so ``torch.load(weights_only=True)`` reads it and a checkpoint from an
untrusted place cannot run code. It is written to a temporary file in the same directory,
fsynced, then renamed over ``latest.pt``: a crash mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ptycl.errors import CheckpointError

LATEST = "latest.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / LATEST
    temporary = directory / f".{LATEST}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)
    return target


def load_checkpoint(directory: Path) -> dict[str, Any]:
    path = directory / LATEST
    if not path.exists():
        raise CheckpointError(path, "no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for torn or foreign files
        raise CheckpointError(
            path, f"unreadable checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from None
