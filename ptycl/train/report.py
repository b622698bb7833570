"""What a continual run leaves behind: metrics.json, error matrices as CSV, plots."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ptycl.config import Config
from ptycl.eval.continual_metrics import summarize_errors, write_error_matrix_csv
from ptycl.eval.evaluate import MATRIX_NAMES, ErrorMatrices
from ptycl.eval.plots import plot_cost_per_scan, plot_error_matrix, plot_error_over_time
from ptycl.model.ptychonn import parameter_count
from ptycl.outputs import write_text
from ptycl.train.trainer import ContinualTrainer

# Matrices where lower is better get forgetting/backward-transfer summaries.
ERROR_METRICS = ("amplitude_mae", "phase_mae")


@dataclass
class RunReport:
    name: str
    strategy: str
    parameters: int
    store_capacity: int | None
    scan_ids: list[str]
    costs: list[dict]  # per scan: steps, samples, seconds
    matrices: dict[str, list[list[float]]]  # name -> R as nested lists (NaN: not yet seen)
    summary: dict[str, dict]  # error metric -> final average, backward transfer, forgetting
    rejected: list[str]
    wall_seconds: float
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
    ) -> RunReport:
        complete = {name: matrices.matrix(name) for name in MATRIX_NAMES}
        return cls(
            name=config.run.name,
            strategy=config.train.strategy,
            parameters=parameter_count(trainer.model),
            store_capacity=trainer.store.capacity if trainer.store is not None else None,
            scan_ids=matrices.scan_ids,
            costs=[asdict(cost) for cost in trainer.state.costs],
            matrices={name: matrix.tolist() for name, matrix in complete.items()},
            summary={
                name: summarize_errors(complete[name], matrices.scan_ids, metric=name).to_dict()
                for name in ERROR_METRICS
                if len(complete[name])
            },
            rejected=rejected,
            wall_seconds=wall_seconds,
            ranks=trainer.dist.world_size,
            stopped=stopped,
        )

    def summary_line(self) -> str:
        phase = self.summary.get("phase_mae", {})
        samples = sum(c["samples"] for c in self.costs)
        seconds = sum(c["seconds"] for c in self.costs)
        on = f" on {self.ranks} ranks" if self.ranks > 1 else ""
        return (
            f"{self.strategy}{on}: {len(self.scan_ids)} scans, final average phase MAE "
            f"{phase.get('final_average_error') or math.nan:.4f} rad, forgetting {phase.get('mean_forgetting') or math.nan:.4f}, "
            f"{samples} samples in {seconds:.1f} s of training ({len(self.rejected)} scans rejected)"
        )


def _json_safe(value):
    """NaN -> None so metrics.json is strict JSON that any tool reads."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: RunReport, output_dir: Path) -> None:
    write_text(output_dir / "metrics.json", json.dumps(_json_safe(asdict(report)), indent=2))
    if not report.scan_ids:
        return
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    for name, rows in report.matrices.items():
        write_error_matrix_csv(
            ErrorMatrices(report.scan_ids, {name: rows}).matrix(name),
            report.scan_ids,
            output_dir / f"R_{name}.csv",
        )
    for name in ERROR_METRICS:
        matrix = ErrorMatrices(report.scan_ids, {name: report.matrices[name]}).matrix(name)
        plot_error_matrix(
            matrix,
            report.scan_ids,
            plots / f"R_{name}.png",
            title=f"{report.strategy}: {name} R[i, j]",
        )
        plot_error_over_time(
            {report.strategy: matrix}, report.scan_ids, plots / f"{name}_first_scans.png"
        )
    plot_cost_per_scan(
        {report.strategy: [c["seconds"] for c in report.costs]}, plots / "cost_per_scan.png"
    )
