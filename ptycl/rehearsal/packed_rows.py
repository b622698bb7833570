"""The store's rows as a checkpoint keeps them: compressed without loss where that pays.

The rows (n, 5, H, W) are nearly all of a checkpoint. They are written plane after plane (the
inputs, then the labels, then the outputs: each a run of like values), in blocks of at most
``BLOCK_BYTES``, each byte-shuffled and compressed with Zstandard by Blosc (numcodecs, which
zarr brings). A block that does not shrink by a tenth is kept as it is. Decoding gives the
same bits back, so a resumed run continues exactly; the store's own precision (float16 with
``train.store.half_precision``) is what is saved. Every part is a tensor, a string, a bool or
an int, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numcodecs import Blosc

BLOCK_BYTES = 64 * 2**20  # Blosc takes at most 2 GB at once; blocks also bound the copies
CODEC = "blosc-zstd-1-shuffle"
PAYS = 0.9  # a block is kept compressed only below this share of its size


def pack_rows(rows: torch.Tensor) -> dict[str, Any]:
    """``rows`` (n, planes, H, W), float16 or float32 on any device, as checkpoint parts."""
    planes = rows.detach().cpu().transpose(0, 1).contiguous()  # (planes, n, H, W)
    flat = planes.reshape(-1).view(torch.uint8).numpy()
    codec = Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE, typesize=planes.element_size())
    blocks, compressed = [], []
    for start in range(0, len(flat), BLOCK_BYTES):
        raw = flat[start : start + BLOCK_BYTES]
        packed = codec.encode(raw)
        small = len(packed) < PAYS * len(raw)
        data = np.frombuffer(packed, dtype=np.uint8) if small else raw
        blocks.append(torch.from_numpy(data.copy()))
        compressed.append(small)
    return {
        "codec": CODEC,
        "shape": list(rows.shape),
        "dtype": str(rows.dtype).removeprefix("torch."),
        "blocks": blocks,
        "compressed": compressed,
    }


def unpack_rows(packed: dict[str, Any] | torch.Tensor) -> torch.Tensor:
    """The rows ``pack_rows`` was given, bit for bit (a tensor as checkpoints before
    compression saved them is returned as it is)."""
    if isinstance(packed, torch.Tensor):
        return packed
    if packed["codec"] != CODEC:
        raise ValueError(f"store rows packed with {packed['codec']!r}, not {CODEC!r}")
    codec = Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)  # decoding reads the header
    parts = [
        np.frombuffer(codec.decode(block.numpy()), dtype=np.uint8) if small else block.numpy()
        for block, small in zip(packed["blocks"], packed["compressed"], strict=True)
    ]
    n, planes, *frame = packed["shape"]
    dtype = getattr(torch, packed["dtype"])
    if not parts:
        return torch.empty((n, planes, *frame), dtype=dtype)
    data = torch.from_numpy(np.concatenate(parts))
    values = data.view(dtype).reshape(planes, n, *frame)
    return values.transpose(0, 1).contiguous()
