"""Continual-learning summaries of an error matrix (GEM's metrics, written for errors).

Design notes: docs/design.md.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptycl.outputs import replacing, write_text

ROW_HEADER = "after_scan"  # first CSV column: the scan trained through, one row per step


@dataclass(frozen=True)
class ContinualSummary:
    """What an error matrix says about learning and forgetting over a sequence of scans."""

    metric: str  # what R holds, e.g. "phase_mae"
    scan_ids: tuple[str, ...]
    error_matrix: np.ndarray  # (T, T) R[i, j]; NaN: never evaluated (ignored above the diagonal)
    final_average_error: float  # over the scans evaluated in the last row
    learning_error: float  # mean of the diagonal R[j, j] evaluated
    backward_transfer: float  # NaN for a single scan (or no scan with both values)
    average_error_per_step: tuple[float, ...]  # mean of R[i, :i+1] evaluated: the learning curve
    # scan id -> final minus best before the end, for scans j < T-1 with a final value and at
    # least one earlier one
    forgetting: dict[str, float]
    mean_forgetting: float  # NaN for a single scan (or no scan in ``forgetting``)
    final_over_best: dict[str, float]  # scan id -> final / best before the end, same scans

    def to_dict(self, matrix: bool = False) -> dict[str, object]:
        """Plain JSON-ready values; NaN (undefined) and inf (a ratio to a zero error) become None.
        The numbers only, unless ``matrix``: then also ``error_matrix``, R dense (T x T), which
        a run's ``metrics.json`` leaves out (it holds R sparse, ``ptycl.train.report``)."""
        out = {
            "metric": self.metric,
            "scan_ids": list(self.scan_ids),
            "final_average_error": _json_float(self.final_average_error),
            "learning_error": _json_float(self.learning_error),
            "backward_transfer": _json_float(self.backward_transfer),
            "average_error_per_step": [_json_float(v) for v in self.average_error_per_step],
            "forgetting": {k: _json_float(v) for k, v in self.forgetting.items()},
            "mean_forgetting": _json_float(self.mean_forgetting),
            "final_over_best": {k: _json_float(v) for k, v in self.final_over_best.items()},
        }
        if matrix:
            out["error_matrix"] = [[_json_float(v) for v in row] for row in self.error_matrix]
        return out


def summarize_errors(
    error_matrix: np.ndarray, scan_ids: Sequence[str], metric: str = "error"
) -> ContinualSummary:
    """Final average error, backward transfer and forgetting of an error matrix R (T x T);
    never-evaluated cells (NaN) are left out of every mean, minimum and difference."""
    R = _checked_matrix(error_matrix, scan_ids)
    T = len(R)
    final = R[T - 1]
    history = range(T - 1)  # scans that were learned before the last one
    # best error on scan j before the end: min over rows j .. T-2 of column j
    best = np.array([_finite_min(R[j : T - 1, j]) for j in history])
    forgotten = [j for j in history if math.isfinite(final[j]) and math.isfinite(best[j])]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = final[: T - 1] / best
    return ContinualSummary(
        metric=metric,
        scan_ids=tuple(scan_ids),
        error_matrix=R,
        final_average_error=_mean(_finite(final)),
        learning_error=_mean(_finite(np.diag(R))),
        backward_transfer=_mean(_finite(np.array([final[j] - R[j, j] for j in history]))),
        average_error_per_step=tuple(_mean(_finite(R[i, : i + 1])) for i in range(T)),
        forgetting={scan_ids[j]: float(final[j] - best[j]) for j in forgotten},
        mean_forgetting=_mean((final[: T - 1] - best)[forgotten]),
        final_over_best={scan_ids[j]: float(ratio[j]) for j in forgotten},
    )


def write_error_matrix_csv(
    error_matrix: np.ndarray, scan_ids: Sequence[str], path: str | Path
) -> Path:
    """R as CSV: a header of scan ids, one row per training step; cells never evaluated (not
    seen yet, or left out of the row's evaluation) empty."""
    R = _checked_matrix(error_matrix, scan_ids)
    path = Path(path)
    with replacing(path) as temporary, temporary.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([ROW_HEADER, *scan_ids])
        for scan_id, row in zip(scan_ids, R, strict=True):
            writer.writerow([scan_id, *("" if math.isnan(v) else repr(float(v)) for v in row)])
    return path


def read_error_matrix_csv(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """The (R, scan ids) that ``write_error_matrix_csv`` wrote."""
    with Path(path).open(newline="") as source:
        header, *rows = list(csv.reader(source))
    scan_ids = tuple(header[1:])
    R = np.array([[float(v) if v else np.nan for v in row[1:]] for row in rows], dtype=np.float64)
    return _checked_matrix(R, scan_ids), scan_ids


def write_summary_json(summary: ContinualSummary, path: str | Path) -> Path:
    """The summary (matrix included) as strict JSON: undefined values are null, not NaN."""
    text = json.dumps(summary.to_dict(matrix=True), indent=2, allow_nan=False)
    return write_text(Path(path), text + "\n")


def _checked_matrix(error_matrix: np.ndarray, scan_ids: Sequence[str]) -> np.ndarray:
    """R as float64, checked: square over distinct scan ids; in the lower triangle each cell an
    error or NaN (never evaluated), never infinite."""
    R = np.asarray(error_matrix, dtype=np.float64)
    T = len(scan_ids)
    if T == 0 or R.shape != (T, T):
        raise ValueError(f"error matrix of shape {R.shape} for {T} scan ids: need (T, T), T >= 1")
    if len(set(scan_ids)) != T:
        raise ValueError(f"scan ids repeat: {list(scan_ids)}")
    seen = np.tril(np.ones((T, T), bool))
    if np.isinf(R[seen]).any():
        i, j = np.argwhere(seen & np.isinf(R))[0]
        raise ValueError(
            f"R[{i}, {j}] (scan {scan_ids[j]} after scan {scan_ids[i]}) is not a finite error"
        )
    return R


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _finite_min(values: np.ndarray) -> float:
    finite = _finite(values)
    return float(finite.min()) if finite.size else math.nan


def _mean(values: Sequence[float] | np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
