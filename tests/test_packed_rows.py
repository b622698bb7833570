"""The store's rows in a checkpoint: the same bits back, smaller where compression pays."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import ptycl.rehearsal.packed_rows as packed_rows
from ptycl.config import load_config
from ptycl.prep.scan_data import load_scan
from ptycl.rehearsal.local_store import LocalReservoirStore
from ptycl.rehearsal.packed_rows import pack_rows, unpack_rows
from ptycl.rehearsal.samples import ReplaySamples
from tests.conftest import TINY


def _round_trip(packed: dict) -> dict:
    """Through torch.save and the checkpoint's loader (weights_only)."""
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _nbytes(packed: dict) -> int:
    return sum(block.numel() for block in packed["blocks"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_come_back_bit_for_bit_in_blocks(monkeypatch, dtype) -> None:
    monkeypatch.setattr(packed_rows, "BLOCK_BYTES", 1000)  # many blocks, a short last one
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 5, 8, 8)).astype(np.float32)
    values[:, 0, :4] = 0.0  # a compressible plane beside incompressible noise
    values[0, 1, 0, :3] = [np.nan, np.inf, -0.0]  # bits, not values, must survive
    rows = torch.from_numpy(values).to(dtype)
    packed = _round_trip(pack_rows(rows))
    assert len(packed["blocks"]) > 3 and packed["dtype"] == str(dtype).removeprefix("torch.")
    assert not all(packed["compressed"])  # noise is kept as it is: compressing it does not pay
    back = unpack_rows(packed)
    assert back.dtype == dtype and back.shape == rows.shape
    bits = torch.int16 if dtype == torch.float16 else torch.int32
    assert torch.equal(back.view(bits), rows.view(bits))
    empty = unpack_rows(_round_trip(pack_rows(rows[:0])))
    assert empty.shape == (0, 5, 8, 8) and empty.dtype == dtype


def test_a_store_of_real_frames_takes_less_than_its_size(tiny_scans) -> None:
    """Diffraction frames are half zeros and labels are smooth: the store's share of a
    checkpoint shrinks, and a store restored from it draws the same samples."""
    config = load_config(None, TINY)
    scan = load_scan(sorted(tiny_scans.iterdir())[0], config.prep, seed=0)
    rows = scan.train_rows
    for half in (False, True):
        store = LocalReservoirStore(len(rows), (64, 64), half_precision=half, seed=3)
        store.offer(
            ReplaySamples(
                inputs=scan.inputs[rows],
                labels=scan.labels[rows],
                outputs=scan.labels[rows] * 0.9,
                scan_index=torch.zeros(len(rows), dtype=torch.int64),
                step=torch.zeros(len(rows), dtype=torch.int64),
            )
        )
        state = _round_trip(store.state_dict())
        raw = len(rows) * 5 * 64 * 64 * (2 if half else 4)
        assert _nbytes(state["held"]["rows"]) < 0.75 * raw
        restored = LocalReservoirStore(len(rows), (64, 64), half_precision=half, seed=0)
        restored.load_state_dict(state)
        a, b = store.draw(8), restored.draw(8)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
