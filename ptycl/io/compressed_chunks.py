"""Compressed HDF5 chunks checked before a filter plugin decodes them.

The bitshuffle filter (HDF5 filter 32008, with LZ4 or Zstandard inside: what Dectris Eiger
detectors write) believes its chunk's framing: a chunk whose header claims more bytes than the
chunk holds, or one whose block sizes run past its end, makes the plugin read outside its
buffer and kill the process (a segmentation fault, with hdf5plugin 7.1). So before such a
chunk is read, its framing is walked: the header's decoded size must be the chunk's, and the
blocks' sizes must add up to exactly the bytes stored. Blosc, LZ4 and Zstandard chunks with a
lying header are refused by their plugins with an error, which the readers report.

Bitshuffle's framing: uint64 big-endian decoded bytes, uint32 big-endian block bytes, then
each block as a uint32 big-endian compressed size and that many bytes; blocks hold
``block`` elements, the last one the remainder rounded down to a multiple of 8 elements, and
the elements left over are stored as they are at the end.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from math import prod
from typing import Any

import h5py

BITSHUFFLE_FILTER = 32008
BITSHUFFLE_COMPRESSED = (2, 3)  # cd_values[4]: LZ4, Zstandard (0: no compression, no framing)
BITSHUFFLE_GROUP = 8  # elements are shuffled in groups of 8


def _bitshuffle_problem(chunk: bytes, decoded_bytes: int, itemsize: int) -> str | None:
    if len(chunk) < 12:
        return f"bitshuffle chunk of {len(chunk)} bytes has no header"
    total, block_bytes = struct.unpack_from(">QI", chunk)
    if total != decoded_bytes:
        return f"bitshuffle header declares {total} bytes, the chunk holds {decoded_bytes}"
    if block_bytes == 0 or block_bytes % itemsize:
        return f"bitshuffle header declares blocks of {block_bytes} bytes"
    elements, block = total // itemsize, block_bytes // itemsize
    full, rest = divmod(elements, block)
    blocks = full + (1 if rest >= BITSHUFFLE_GROUP else 0)
    position = 12
    for _ in range(blocks):
        if position + 4 > len(chunk):
            return "bitshuffle blocks run past the end of the chunk"
        (size,) = struct.unpack_from(">I", chunk, position)
        position += 4 + size
    if position + (rest % BITSHUFFLE_GROUP) * itemsize != len(chunk):
        return f"bitshuffle blocks fill {position} of the chunk's {len(chunk)} bytes"
    return None


def chunk_framing_check(dataset: h5py.Dataset) -> Callable[[Any], str | None] | None:
    """A check of one stored chunk (a ``chunk_iter`` record) for datasets whose outermost
    filter needs one; None for the others."""
    plist = dataset.id.get_create_plist()
    count = plist.get_nfilters()
    if count == 0:
        return None
    code, _, values, _ = plist.get_filter(count - 1)
    if code != BITSHUFFLE_FILTER or len(values) < 5 or values[4] not in BITSHUFFLE_COMPRESSED:
        return None
    chunks = dataset.chunks
    assert chunks is not None  # filters need a chunked layout
    itemsize = dataset.dtype.itemsize
    decoded = prod(chunks) * itemsize
    filename = dataset.file.filename
    skipped_bit = 1 << (count - 1)  # a chunk's filter mask: this filter was not applied

    def check(info: Any) -> str | None:
        if info.filter_mask & skipped_bit:
            return None
        fd = os.open(filename, os.O_RDONLY)
        try:
            chunk = os.pread(fd, info.size, info.byte_offset)
        finally:
            os.close(fd)
        return _bitshuffle_problem(chunk, decoded, itemsize)

    return check
