"""The local reservoir store: uniform inclusion, capacity, draws, exact state round trip."""

import numpy as np
import pytest
import torch
from scipy import stats

from ptycl.rehearsal.local_store import LocalReservoirStore, samples_for_bytes
from ptycl.rehearsal.samples import ReplaySamples


def _samples(ids: range, size: int = 4) -> ReplaySamples:
    n = len(ids)
    ident = torch.tensor(list(ids), dtype=torch.int64)
    return ReplaySamples(
        inputs=ident.view(n, 1, 1, 1).float().expand(n, 1, size, size).clone(),
        labels=torch.zeros(n, 2, size, size),
        outputs=torch.ones(n, 2, size, size),
        scan_index=ident,
        step=torch.zeros(n, dtype=torch.int64),
    )


def _stream(store: LocalReservoirStore, n_items: int, batch: int) -> None:
    for start in range(0, n_items, batch):
        store.offer(_samples(range(start, min(n_items, start + batch)), size=store.frame_shape[0]))


@pytest.mark.slow
def test_every_item_of_the_stream_is_held_with_probability_capacity_over_seen():
    n_items, capacity, trials = 120, 12, 1500
    counts = np.zeros(n_items)
    for trial in range(trials):
        store = LocalReservoirStore(capacity, (1, 1), seed=trial)
        _stream(store, n_items, batch=7)
        held = store.draw(capacity).scan_index.numpy()
        assert len(np.unique(held)) == capacity  # no duplicates held
        counts[held] += 1
    expected = trials * capacity / n_items
    chi2 = ((counts - expected) ** 2 / expected).sum()
    p_value = stats.chi2.sf(chi2, df=n_items - 1)
    assert p_value > 1e-3, f"inclusion not uniform: chi2={chi2:.1f}, p={p_value:.2g}"


def test_store_fills_then_stays_at_capacity():
    store = LocalReservoirStore(10, (4, 4))
    store.offer(_samples(range(4)))
    assert (len(store), store.seen) == (4, 4)
    _stream(store, 50, batch=9)
    assert (len(store), store.seen) == (10, 54)


def test_draws_are_distinct_and_capped_by_what_is_held():
    store = LocalReservoirStore(50, (4, 4))
    assert store.draw(8) is None  # empty store
    store.offer(_samples(range(5)))
    drawn = store.draw(32)  # more than held: everything held, once
    assert sorted(drawn.scan_index.tolist()) == [0, 1, 2, 3, 4]
    # each sample keeps its own input frame, labels and stored outputs together
    assert torch.equal(drawn.inputs[:, 0, 0, 0].long(), drawn.scan_index)
    assert torch.all(drawn.outputs == 1)


def test_half_precision_and_byte_capacity():
    per_sample_fp32 = 5 * 64 * 64 * 4 + 16
    assert samples_for_bytes(10 * per_sample_fp32, (64, 64), half_precision=False) == 10
    assert samples_for_bytes(10 * per_sample_fp32, (64, 64), half_precision=True) == 19
    store = LocalReservoirStore(4, (4, 4), half_precision=True)
    store.offer(_samples(range(3)))
    assert store.draw(3).inputs.dtype == torch.float16
    assert store.sample_nbytes() == 5 * 16 * 2 + 16


def test_state_round_trip_continues_identically():
    a = LocalReservoirStore(8, (2, 2), seed=3)
    _stream(a, 30, batch=4)
    b = LocalReservoirStore(8, (2, 2), seed=99)
    b.load_state_dict(a.state_dict())
    _stream(a, 40, batch=5)
    _stream(b, 40, batch=5)
    assert a.seen == b.seen == 70
    assert torch.equal(a.draw(8).scan_index, b.draw(8).scan_index)
    with pytest.raises(ValueError, match="capacity"):
        LocalReservoirStore(9, (2, 2)).load_state_dict(a.state_dict())
