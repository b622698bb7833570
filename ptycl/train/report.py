"""What a continual run leaves behind: metrics.json, error matrices as CSV, plots."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ptycl.config import Config
from ptycl.eval.continual_metrics import summarize_errors, write_error_matrix_csv
from ptycl.eval.evaluate import MATRIX_NAMES, ErrorMatrices
from ptycl.eval.plots import (
    METRIC_LABELS,
    plot_costs,
    plot_error_matrix,
    plot_error_over_time,
)
from ptycl.model.ptychonn import parameter_count
from ptycl.outputs import write_text
from ptycl.train.trainer import ContinualTrainer

# Matrices where lower is better get forgetting/backward-transfer summaries.
ERROR_METRICS = ("amplitude_mae", "phase_mae", "phase_offset_free_mae")
# Skills against each scan's constant patch (higher is better): final and diagonal averages.
SKILL_METRICS = ("amplitude_skill", "phase_skill")
PLOTTED_METRICS = ("amplitude_mae", "phase_offset_free_mae")  # the raw phase MAE: CSV only
FIRST_SCANS_PLOTTED = 6  # panels of the error-over-time plot: a stream of 4-6 domains whole


@dataclass
class RunReport:
    """One run's report, written to ``metrics.json`` (strict JSON: NaN is null) by
    ``write_report`` after every scan, by ``ptycl train`` and ``ptycl watch`` alike.

    The error matrices R[i, j] (the metric on scan j after training through scan i) are kept
    sparse, as ``ErrorMatrices`` holds them, so the file grows with the cells evaluated, not
    with the square of the scans. ``error_rows[i]`` is row i::

        {"after_scan": scan_ids[i],
         "columns": [j, ...],               # indices into scan_ids, ascending
         "amplitude_mae": [R[i, j], ...],   # aligned with "columns", one list per MATRIX_NAMES
         "phase_mae": [...], ...}

    Every cell not listed was never evaluated (NaN in ``matrix``, empty in ``R_*.csv``).
    ``ptycl train`` evaluates every scan seen, so its row i has columns 0..i; ``ptycl watch``
    the scan just trained and its evaluation set. ``matrix(name)`` gives the dense T x T array
    and ``read`` loads a ``metrics.json`` back, so no consumer needs to know this layout.
    ``summary`` holds the numbers of ``summarize_errors`` for the error metrics (no matrix)
    and, for the skills, their final and diagonal (just learned) averages. ``constants`` holds
    each scan's constant-patch errors, the baseline of its skills.
    """

    name: str
    strategy: str
    parameters: int
    store_capacity: int | None
    scan_ids: list[str]
    costs: list[dict]  # per scan: steps, samples, seconds
    error_rows: list[dict]  # row i of R: after_scan, columns, one value list per metric
    summary: dict[str, dict]  # error metric -> final average, backward transfer, forgetting
    rejected: list[str]
    wall_seconds: float
    constants: dict[str, dict] = field(default_factory=dict)
    # The final model on scans of each domain never trained on: scan id -> errors and skills.
    unseen: dict[str, dict] = field(default_factory=dict)
    ranks: int = 1  # MPI ranks training data-parallel (the costs are rank 0's seconds)
    # Why the run ended before its last scan (a signal, --max-steps); None: it went through.
    stopped: str | None = None

    @classmethod
    def build(
        cls,
        config: Config,
        trainer: ContinualTrainer,
        matrices: ErrorMatrices,
        rejected: list[str],
        wall_seconds: float,
        stopped: str | None = None,
        unseen: dict[str, dict] | None = None,
    ) -> RunReport:
        return cls(
            name=config.run.name,
            strategy=config.train.strategy,
            parameters=parameter_count(trainer.model),
            store_capacity=trainer.store.capacity if trainer.store is not None else None,
            scan_ids=matrices.scan_ids,
            costs=[asdict(cost) for cost in trainer.state.costs],
            error_rows=_error_rows(matrices),
            summary={
                name: summarize_errors(
                    matrices.matrix(name), matrices.scan_ids, metric=name
                ).to_dict()
                for name in ERROR_METRICS
                if matrices.rows[name]
            }
            | {
                name: skill_summary(matrices.matrix(name))
                for name in SKILL_METRICS
                if matrices.rows[name]
            },
            constants=dict(matrices.constants),
            unseen=unseen or {},
            rejected=rejected,
            wall_seconds=wall_seconds,
            ranks=trainer.dist.world_size,
            stopped=stopped,
        )

    @classmethod
    def read(cls, path: str | Path) -> RunReport:
        """The report that ``write_report`` wrote to ``path`` (a ``metrics.json``); the null
        values of the error rows back to NaN."""
        data = json.loads(Path(path).read_text())
        data["error_rows"] = [
            {
                key: [math.nan if v is None else v for v in value] if key in MATRIX_NAMES else value
                for key, value in row.items()
            }
            for row in data["error_rows"]
        ]
        return cls(**data)

    def matrix(self, name: str) -> np.ndarray:
        """R of metric ``name`` as a dense T x T array, NaN where never evaluated (above the
        diagonal: not yet seen)."""
        T = len(self.error_rows)
        out = np.full((T, T), np.nan)
        for i, row in enumerate(self.error_rows):
            out[i, row["columns"]] = [math.nan if v is None else v for v in row[name]]
        return out

    def constant(self, name: str) -> dict[str, float] | None:
        """scan id -> the error ``name`` of the scan's constant patch; None for a metric that
        has no such baseline (PSNR, SSIM)."""
        found = {s: c[name] for s, c in self.constants.items() if name in c}
        return found or None

    def summary_line(self) -> str:
        phase = self.summary.get("phase_offset_free_mae", {})
        skill = self.summary.get("phase_skill", {})
        samples = sum(c["samples"] for c in self.costs)
        seconds = sum(c["seconds"] for c in self.costs)
        on = f" on {self.ranks} ranks" if self.ranks > 1 else ""

        def number(value: float | None) -> float:
            return math.nan if value is None else value

        return (
            f"{self.strategy}{on}: {len(self.scan_ids)} scans, final average offset-free phase "
            f"MAE {number(phase.get('final_average_error')):.4f} rad (just learned "
            f"{number(phase.get('learning_error')):.4f}), forgetting "
            f"{number(phase.get('mean_forgetting')):.4f}, phase skill final "
            f"{number(skill.get('final_average')):.2f} (just learned "
            f"{number(skill.get('diagonal_average')):.2f}), {samples} samples in {seconds:.1f} s "
            f"of training ({len(self.rejected)} scans rejected)"
        )


def skill_summary(matrix: np.ndarray) -> dict[str, float | None]:
    """A skill matrix's final average (last row) and diagonal average (each scan just
    learned); None where nothing was evaluated."""
    final, diagonal = matrix[-1], np.diag(matrix)

    def mean(values: np.ndarray) -> float | None:
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else None

    return {"final_average": mean(final), "diagonal_average": mean(diagonal)}


def _error_rows(matrices: ErrorMatrices) -> list[dict]:
    """``RunReport.error_rows`` of ``matrices``: its sparse rows, copied."""
    return [
        {
            "after_scan": scan_id,
            "columns": [int(j) for j in columns],
            **{name: [float(v) for v in values[i]] for name, values in matrices.rows.items()},
        }
        for i, (scan_id, columns) in enumerate(
            zip(matrices.scan_ids, matrices.columns, strict=True)
        )
    ]


def _json_safe(value):
    """NaN -> None so metrics.json is strict JSON that any tool reads."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def metrics_json(report: RunReport) -> str:
    """The text of ``metrics.json``: the report as strict JSON (NaN: null)."""
    return json.dumps(_json_safe(asdict(report)), indent=2)


def write_report(report: RunReport, output_dir: Path, tables_and_plots: bool = True) -> None:
    """``metrics.json`` (sparse: it grows with the cells evaluated), and unless told not to
    the dense ``R_*.csv`` tables and the plots, which grow with the square of the scans."""
    write_text(output_dir / "metrics.json", metrics_json(report))
    if not report.scan_ids or not tables_and_plots:
        return
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    for name in MATRIX_NAMES:
        write_error_matrix_csv(report.matrix(name), report.scan_ids, output_dir / f"R_{name}.csv")
    for name in PLOTTED_METRICS:
        matrix, label = report.matrix(name), METRIC_LABELS[name]
        quantity = label.split(" (")[0]
        plot_error_matrix(
            matrix,
            report.scan_ids,
            plots / f"R_{name}.png",
            title=f"{report.strategy}: {quantity}, R[i, j]",
            metric=label,
        )
        plot_error_over_time(
            {report.strategy: matrix},
            report.scan_ids,
            plots / f"{name}_first_scans.png",
            title=f"{report.strategy}: {quantity} on the first scans as training goes on",
            metric=label,
            first_k=FIRST_SCANS_PLOTTED,
            constants=report.constant(name),
        )
    plot_costs({report.strategy: report.costs}, plots, [c["scan_id"] for c in report.costs])
