"""Evaluation: image errors of predictions (``image_metrics``), continual-learning summaries of
the error matrix R[i, j] (``continual_metrics``) and PNG figures of both (``plots``, imported on
its own so that computing metrics never loads matplotlib)."""

from ptycl.eval.continual_metrics import (
    ContinualSummary,
    read_error_matrix_csv,
    summarize_errors,
    write_error_matrix_csv,
    write_summary_json,
)
from ptycl.eval.image_metrics import (
    ImageErrors,
    batch_errors,
    image_errors,
    object_errors,
    on_same_grid,
    wrapped_phase_difference,
)

__all__ = [
    "ContinualSummary",
    "ImageErrors",
    "batch_errors",
    "image_errors",
    "object_errors",
    "on_same_grid",
    "read_error_matrix_csv",
    "summarize_errors",
    "wrapped_phase_difference",
    "write_error_matrix_csv",
    "write_summary_json",
]
