"""The watcher's bounded evaluation: the reservoir of scans it evaluates again, the sparse error
matrices it fills, and the minimum it keeps of each scan."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from ptycl.eval.evaluate import MATRIX_NAMES, ErrorMatrices, EvaluationScan, scan_errors
from ptycl.model.ptychonn import PtychoNN
from ptycl.prep.scan_data import load_scan
from ptycl.stream.evaluation_set import EvaluationReservoir
from tests.conftest import tiny_config

NAN = math.nan

# -- the reservoir ------------------------------------------------------------------------------

CAPACITY, ITEMS, RUNS = 4, 24, 3000
# Chi-square over the ITEMS inclusion counts against the uniform CAPACITY / n each, ITEMS - 1
# degrees of freedom, at p = 0.001. The runs are seeded (seeds 0 .. RUNS-1), so the test is
# deterministic; a reservoir biased towards recent items (a window, or a fixed admission
# probability) gives statistics in the thousands.
P_VALUE = 1e-3


def _inclusion_counts(after: int) -> np.ndarray:
    counts = np.zeros(after, int)
    for seed in range(RUNS):
        reservoir = EvaluationReservoir(CAPACITY, seed)
        for item in range(after):
            reservoir.offer(item)
        counts[reservoir.members] += 1
    return counts


@pytest.mark.parametrize("after", [ITEMS // 2, ITEMS])
def test_every_item_is_held_with_the_same_probability(after: int):
    counts = _inclusion_counts(after)
    assert counts.sum() == RUNS * CAPACITY  # always full once CAPACITY items were offered
    expected = RUNS * CAPACITY / after
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(1 - P_VALUE, after - 1), (statistic, counts.tolist())
    # and not merely on average: the first and the last item alike, within 5 sigma
    sigma = math.sqrt(RUNS * (CAPACITY / after) * (1 - CAPACITY / after))
    assert abs(counts[0] - expected) < 5 * sigma and abs(counts[-1] - expected) < 5 * sigma


def test_holds_everything_until_full_then_capacity_and_reports_evictions():
    reservoir = EvaluationReservoir(3, seed=7)
    assert [reservoir.offer(i) for i in range(3)] == [(True, None)] * 3
    held = set(reservoir.members)
    for item in range(3, 50):
        admitted, evicted = reservoir.offer(item)
        if admitted:
            assert evicted in held
            held = held - {evicted} | {item}
        else:
            assert evicted is None
        assert set(reservoir.members) == held and len(reservoir) == 3
    assert reservoir.seen == 50


def test_state_round_trip_gives_the_identical_future():
    straight = EvaluationReservoir(5, seed=11)
    stopped = EvaluationReservoir(5, seed=11)
    for item in range(37):
        straight.offer(item)
        stopped.offer(item)
    # through a weights-only checkpoint, and through JSON, as the watcher's state travels
    buffer = io.BytesIO()
    torch.save({"evaluation_set": stopped.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["evaluation_set"]
    resumed = EvaluationReservoir.from_state(json.loads(json.dumps(state)))
    assert resumed.members == straight.members and resumed.seen == 37
    future = [straight.offer(item) for item in range(37, 400)]
    assert [resumed.offer(item) for item in range(37, 400)] == future
    assert resumed.members == straight.members
    assert any(admitted for admitted, _ in future)  # the future does draw
    # another seed, another set
    other = EvaluationReservoir(5, seed=12)
    for item in range(400):
        other.offer(item)
    assert other.members != straight.members


def test_a_state_that_cannot_be_is_refused():
    reservoir = EvaluationReservoir(2, seed=0)
    reservoir.offer(0)
    state = reservoir.state_dict()
    with pytest.raises(ValueError, match="holds 2 items after 1 offers"):
        EvaluationReservoir.from_state({**state, "slots": [0, 1]})
    with pytest.raises(ValueError, match="at least 1"):
        EvaluationReservoir(0, seed=0)


# -- the sparse error matrices ------------------------------------------------------------------


def _sparse() -> ErrorMatrices:
    """Three rows: row 0 {0}, row 1 {0, 1}, row 2 {1, 2} (scan 0 left out after scan 2)."""
    columns = [[0], [0, 1], [1, 2]]
    values = [[1.0], [0.8, 2.0], [2.5, 3.0]]
    return ErrorMatrices(
        scan_ids=["a", "b", "c"],
        rows={name: [list(v) for v in values] for name in MATRIX_NAMES},
        columns=columns,
    )


def test_sparse_rows_fill_their_columns_and_leave_the_rest_never_evaluated():
    matrices = _sparse()
    expected = np.array([[1.0, NAN, NAN], [0.8, 2.0, NAN], [NAN, 2.5, 3.0]])
    np.testing.assert_array_equal(matrices.matrix("phase_mae"), expected)
    assert matrices.latest("phase_mae") == ([1, 2], [2.5, 3.0])
    assert ErrorMatrices().latest("phase_mae") == ([], [])
    back = ErrorMatrices.from_state(matrices.state_dict())
    assert back == matrices


def test_dense_rows_read_from_column_0():
    """Nested dense lists (NaN where never evaluated) read as rows from column 0."""
    dense = ErrorMatrices(["a", "b", "c"], {"phase_mae": _sparse().matrix("phase_mae").tolist()})
    np.testing.assert_array_equal(dense.matrix("phase_mae"), _sparse().matrix("phase_mae"))


# -- what is kept of a scan for evaluating it again ---------------------------------------------


def test_an_evaluation_scan_gives_the_errors_of_the_whole_scan_in_less_memory(tiny_scans, tmp_path):
    config = tiny_config(tiny_scans, tmp_path)
    scan = load_scan(sorted(tiny_scans.glob("*.h5"))[0], config.prep, seed=0)
    kept = EvaluationScan.of(scan)
    torch.manual_seed(0)
    model = PtychoNN(width=4, depth=2, input_size=config.prep.input_size)
    device = torch.device("cpu")
    whole, minimal = (
        scan_errors(model, scan, device),
        scan_errors(model, kept, device),
    )
    assert set(whole) == set(MATRIX_NAMES)
    # the same numbers (to float32 summation order, which oneDNN picks per call)
    assert minimal == pytest.approx(whole, rel=1e-6)
    assert kept.holdout_labels.shape == (len(scan.holdout_rows), 2, *scan.labels.shape[2:])
    full_bytes = scan.inputs.nbytes + scan.labels.nbytes
    kept_bytes = kept.inputs.nbytes + kept.holdout_labels.nbytes
    # frames (1 plane) + the held-out share of the labels (2 planes), of 3 planes
    held = len(scan.holdout_rows) / len(scan)
    assert kept_bytes == pytest.approx((1 + 2 * held) / 3 * full_bytes, rel=0.05)
