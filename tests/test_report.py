"""A run's report: metrics.json holds the error matrices sparse, linear in the cells evaluated,
and gives back the same dense matrices (CSVs, plots, summaries) for ``ptycl train`` and
``ptycl watch`` alike."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import torch

from ptycl.config import load_config
from ptycl.eval.continual_metrics import read_error_matrix_csv, summarize_errors
from ptycl.eval.evaluate import MATRIX_NAMES, ErrorMatrices
from ptycl.train.report import ERROR_METRICS, RunReport, metrics_json, write_report
from ptycl.train.trainer import ScanCost


def _trainer(scan_ids: list[str]) -> SimpleNamespace:
    """What ``RunReport.build`` reads of a trainer: its model, store, costs and ranks."""
    return SimpleNamespace(
        model=torch.nn.Linear(2, 2),
        store=None,
        state=SimpleNamespace(costs=[ScanCost(s, steps=4, samples=32) for s in scan_ids]),
        dist=SimpleNamespace(world_size=1),
    )


def _report(matrices: ErrorMatrices) -> RunReport:
    return RunReport.build(
        load_config(None, []), _trainer(matrices.scan_ids), matrices, [], wall_seconds=1.5
    )


def watch_like(T: int, evaluated: int = 17, seed: int = 0) -> ErrorMatrices:
    """T rows as ``ptycl watch`` fills them: the diagonal and a sample of at most
    ``evaluated`` - 1 earlier scans per row."""
    rng = np.random.default_rng(seed)
    matrices = ErrorMatrices(scan_ids=[f"scan{i:05d}" for i in range(T)])
    for i in range(T):
        earlier = sorted(rng.choice(i, size=min(i, evaluated - 1), replace=False).tolist())
        matrices.columns.append([*earlier, i])
        for name in MATRIX_NAMES:
            matrices.rows[name].append(rng.uniform(0.1, 3.0, len(earlier) + 1).tolist())
    return matrices


def test_metrics_json_grows_with_the_cells_evaluated_not_the_square_of_the_scans():
    sizes = {T: len(metrics_json(_report(watch_like(T))).encode()) for T in (50, 100)}
    assert sizes[100] < 2.5 * sizes[50], sizes  # a dense R would make it ~4x
    text = metrics_json(_report(watch_like(100)))
    assert '"matrices"' not in text and '"error_matrix"' not in text


def test_a_full_lower_triangle_round_trips_through_metrics_json(tmp_path):
    """``ptycl train``'s rows (scans 0..i after scan i): metrics.json, the CSVs and the
    summaries give back the matrix the run evaluated, cell for cell."""
    T = 5
    rng = np.random.default_rng(1)
    ids = [f"scan{i:04d}" for i in range(T)]
    rows = {
        name: [rng.uniform(0.1, 3.0, i + 1).tolist() for i in range(T)] for name in MATRIX_NAMES
    }
    rows["phase_psnr"][3][1] = math.nan  # an evaluated cell whose value is undefined: null
    matrices = ErrorMatrices(scan_ids=ids, rows=rows)  # dense rows from column 0
    report = _report(matrices)
    write_report(report, tmp_path)

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["error_rows"][3]["after_scan"] == "scan0003"
    assert written["error_rows"][3]["columns"] == [0, 1, 2, 3]
    assert written["error_rows"][3]["phase_psnr"][1] is None
    back = RunReport.read(tmp_path / "metrics.json")
    assert back.scan_ids == ids and back.summary == report.summary
    for name in MATRIX_NAMES:
        dense = matrices.matrix(name)
        assert np.isnan(dense[np.triu_indices(T, 1)]).all()
        np.testing.assert_array_equal(back.matrix(name), dense)  # NaN compare equal here
        np.testing.assert_array_equal(report.matrix(name), dense)
        csv_matrix, csv_ids = read_error_matrix_csv(tmp_path / f"R_{name}.csv")
        assert list(csv_ids) == ids
        np.testing.assert_array_equal(csv_matrix, dense)
    for name in ERROR_METRICS:
        assert back.summary[name] == summarize_errors(matrices.matrix(name), ids, name).to_dict()
    assert (tmp_path / "plots" / "R_phase_offset_free_mae.png").stat().st_size > 1000
