"""Iterative labels against the truth, and the solver's speed against the network's
(``ptycl bench label``).

On the configured beamline's scans (the continual scenario's families, simulated with truth):

- each scan is labelled by ``ptycl.label.iterative`` under the config's ``label`` budgets, and
  the label is scored against the truth on the illuminated area (``eval.label_errors``:
  phase offset-free, beside the constant object's errors);
- frames/s of the solver (frames labelled per second of solver time, all epochs) and of the
  network's inference + stitching of the same scan file (``infer_scan`` then ``stitch``, the
  configured model, median of ROUNDS after a warm-up) on the same device, and their ratio;
- the continual run of the config trained once on the truth and once on the solver's labels, both scored at the end against the truth (the final model's phase MAE
  on every scan's held-out frames), so the cost of the solver's label noise shows.

Scans are cut to ``FRAMES_FULL`` frames (``--quick``: ``FRAMES_QUICK``, and one scan per
family) when the config asks for more: the solver's cost grows with frames x epochs.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycl.bench.settings import with_settings
from ptycl.bench.tables import markdown_table
from ptycl.config import Config
from ptycl.eval.evaluate import scan_errors
from ptycl.eval.label_errors import label_errors
from ptycl.io.object_image import read_object_image
from ptycl.io.source import open_scan
from ptycl.label.label_scans import label_scan
from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.model.ptychonn import build_model
from ptycl.outputs import write_text
from ptycl.parallel import resolve_device
from ptycl.prep.scan_data import load_scan
from ptycl.recon.infer import infer_scan
from ptycl.simulate.run import simulate_scans
from ptycl.train.run import run_continual

log = logging.getLogger("ptycl.bench")

FRAMES_QUICK, FRAMES_FULL = 200, 500
ROUNDS = 3


@dataclass(frozen=True)
class ScanFigures:
    scan_id: str
    frames: int
    epochs: int
    stopped_by: str
    final_data_error: float
    phase_mae: float  # label against truth, rad, offset-free, illuminated area
    amplitude_mae: float
    constant_phase_mae: float
    constant_amplitude_mae: float
    solver_seconds: float
    solver_frames_per_s: float  # frames labelled per second
    network_frames_per_s: float  # inference + stitching
    network_over_solver: float


def _simulate(config: Config, out_dir: Path, quick: bool) -> list[Path]:
    frames = min(config.simulate.frames_per_scan, FRAMES_QUICK if quick else FRAMES_FULL)
    n_scans = len(config.simulate.families) if quick else config.simulate.n_scans
    settings = config.simulate.model_copy(
        update={
            "out_dir": out_dir / "truth",
            "frames_per_scan": frames,
            "n_scans": n_scans,
            "labels": "separate",
            "frame_rate_hz": None,
        }
    )
    return simulate_scans(settings, reuse_existing=True)


def _network_rate(config: Config, path: Path, device: torch.device) -> float:
    model = build_model(config.model, config.prep.input_size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    rates = []
    for round_index in range(ROUNDS + 1):  # the first is a warm-up
        started = time.perf_counter()
        prediction = infer_scan(model, path, config.prep, device)
        prediction.stitch()
        sync()
        if round_index:
            rates.append(len(prediction.positions_m) / (time.perf_counter() - started))
    return statistics.median(rates)


def _label_one(config: Config, scan: Path, solver_dir: Path, device: torch.device) -> ScanFigures:
    # The scan beside its solver label, as a beamline directory would hold them.
    linked = solver_dir / scan.name
    if not linked.exists():
        os.link(scan, linked)
    _, label = label_scan(linked, config.label)
    truth = read_object_image(scan.with_name(scan.stem + ".label.h5"))
    with open_scan(scan) as source:
        scan_id = source.metadata.scan_id
    errors = label_errors(label.image, truth, label.positions_m)
    network = _network_rate(config, scan, device)
    solver = len(label.positions_m) / label.seconds
    log.info(
        "%s: %d epochs in %.1f s, label phase MAE %.3f rad (constant %.3f), network %.0f frames/s",
        scan_id,
        label.iterations,
        label.seconds,
        errors.phase_mae,
        errors.constant_phase_mae,
        network,
    )
    return ScanFigures(
        scan_id=scan_id,
        frames=len(label.positions_m),
        epochs=label.iterations,
        stopped_by=label.stopped_by,
        final_data_error=label.final_data_error,
        phase_mae=errors.phase_mae,
        amplitude_mae=errors.amplitude_mae,
        constant_phase_mae=errors.constant_phase_mae,
        constant_amplitude_mae=errors.constant_amplitude_mae,
        solver_seconds=label.seconds,
        solver_frames_per_s=solver,
        network_frames_per_s=network,
        network_over_solver=network / solver,
    )


def _final_error_against_truth(
    config: Config, scans: list[Path], run_dir: Path, device: torch.device
) -> dict[str, float]:
    """The final model of a run scored on the truth of every scan (held-out frames)."""
    model = build_model(config.model, config.prep.input_size).to(device)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints")["trainer"]["model"])
    phase, amplitude = [], []
    for index, path in enumerate(scans):
        # the held-out rows the run drew for this scan (``run_continual``'s seed)
        scan = load_scan(path, config.prep, seed=config.run.seed + index)
        errors = scan_errors(model, scan, device, scan.support)
        phase.append(errors["phase_mae"])
        amplitude.append(errors["amplitude_mae"])
    return {
        "phase_mae_per_scan": phase,
        "amplitude_mae_per_scan": amplitude,
        "final_phase_mae": float(np.mean(phase)),
        "final_amplitude_mae": float(np.mean(amplitude)),
    }


def _continual(
    config: Config, scans: list[Path], solver_dir: Path, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    runs = {"truth": scans[0].parent, "solver labels": solver_dir}
    result = {}
    for name, directory in runs.items():
        run_dir = out_dir / "continual" / name.replace(" ", "_")
        run_config = with_settings(config, run={"output_dir": run_dir})
        run_config = run_config.model_copy(update={"scans": [directory]})
        log.info("bench label: continual run trained on the %s", name)
        report = run_continual(run_config)
        result[name] = {
            **_final_error_against_truth(config, scans, run_dir, device),
            "wall_seconds": report.wall_seconds,
        }
    return result


def _markdown(figures: list[ScanFigures], continual: dict[str, Any] | None, device: str) -> str:
    rows = [
        [
            f.scan_id,
            f.frames,
            f"{f.epochs} ({f.stopped_by})",
            f.phase_mae,
            f.constant_phase_mae,
            f.amplitude_mae,
            f.constant_amplitude_mae,
            f.solver_frames_per_s,
            f.network_frames_per_s,
            f.network_over_solver,
        ]
        for f in figures
    ]
    text = (
        f"## Iterative labels (pty-chi LSQML) against the truth, device {device}\n\n"
        + markdown_table(
            [
                "scan",
                "frames",
                "epochs",
                "label phase MAE (rad)",
                "constant's",
                "label amplitude MAE",
                "constant's",
                "solver frames/s",
                "network frames/s",
                "network / solver",
            ],
            rows,
        )
    )
    if continual:
        text += "\n## The continual run trained on the truth and on the solver's labels\n\n"
        text += markdown_table(
            ["trained on", "final phase MAE vs truth (rad)", "final amplitude MAE vs truth"],
            [[k, v["final_phase_mae"], v["final_amplitude_mae"]] for k, v in continual.items()],
        )
    return text


def run(config: Config, out_dir: Path, quick: bool, train: bool = True) -> dict[str, Any]:
    """Measure, write ``label.md`` into ``out_dir``; return the figures. ``train=False``
    leaves out the two continual runs (tests)."""
    device = resolve_device(config.train.device)
    config = with_settings(config, label={"device": device.type})
    scans = _simulate(config, out_dir / "label-scans", quick)
    solver_dir = out_dir / "label-scans" / "solver"
    solver_dir.mkdir(parents=True, exist_ok=True)
    figures = [_label_one(config, scan, solver_dir, device) for scan in scans]
    continual = _continual(config, scans, solver_dir, out_dir, device) if train else None
    text = _markdown(figures, continual, str(device))
    write_text(out_dir / "label.md", text)
    print(text)
    return {
        "suite": "label",
        "quick": quick,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "label_settings": config.label.model_dump(mode="json"),
        "scans": [asdict(f) for f in figures],
        "median_network_over_solver": statistics.median(f.network_over_solver for f in figures),
        "continual": continual,
        "markdown": str(out_dir / "label.md"),
    }
