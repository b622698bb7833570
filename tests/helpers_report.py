"""Test helpers: a run's error matrices from its metrics.json, dense, and their evaluated cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptycl.eval.evaluate import MATRIX_NAMES
from ptycl.train.report import RunReport


def read_matrices(output_dir: Path) -> dict[str, np.ndarray]:
    """Every metric's R (T x T, NaN where never evaluated) from ``output_dir/metrics.json``."""
    report = RunReport.read(output_dir / "metrics.json")
    return {name: report.matrix(name) for name in MATRIX_NAMES}


def evaluated(matrix: np.ndarray) -> list[float]:
    """The cells of R that were evaluated (not NaN), row by row."""
    return matrix[~np.isnan(matrix)].tolist()
