"""Reconstruction throughput (``ptycl bench infer``): inference, stitching, end to end.

Design notes: docs/design.md.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import torch

from ptycl.bench.charts import BarPanel, bar_chart
from ptycl.bench.tables import markdown_table
from ptycl.bench.timing import interleaved_rounds
from ptycl.config import Config, SimulateSettings
from ptycl.model.ptychonn import build_model
from ptycl.outputs import write_text
from ptycl.parallel import resolve_device
from ptycl.recon.infer import ScanPrediction, infer_scan, predict
from ptycl.simulate.run import simulate_scans

log = logging.getLogger("ptycl.bench")

FRAMES = (64, 128, 256)
TARGET_FRAME, TARGET_FRAMES_PER_S = 128, 50_000.0
BATCH_SIZE = 256  # ``ptycl reconstruct``'s default
# Frames per call, as pixels at the target size, so a call is about as much work at each size;
# a GPU needs many batches in flight to reach its rate, a CPU a few to be timed.
PIXELS_PER_CALL = {
    ("cpu", True): 8 * TARGET_FRAME**2,
    ("cpu", False): 64 * TARGET_FRAME**2,
    ("cuda", True): 8192 * TARGET_FRAME**2,
    ("cuda", False): 32768 * TARGET_FRAME**2,
}
MIN_FRAMES = 4


@dataclass(frozen=True)
class InferWorkload:
    frames: tuple[int, ...]  # input sizes
    frames_per_call: dict[int, int]  # scan frames at each size
    batch_size: int
    rounds: int  # measured rounds, after one warm-up round


@dataclass(frozen=True)
class InferFigures:
    frame: int
    frames_per_call: int
    batch_size: int  # frames per batch as run: at most the frames per call
    inference_frames_per_s: float  # median over rounds
    stitching_patches_per_s: float
    end_to_end_frames_per_s: float
    compiled_inference_frames_per_s: float
    stitching_over_inference: float
    end_to_end_over_inference: float
    compiled_over_plain_inference: float
    by_round: dict[str, list[float]]


def workload(config: Config, quick: bool, frames: tuple[int, ...] = FRAMES) -> InferWorkload:
    pixels = PIXELS_PER_CALL[resolve_device(config.train.device).type, quick]
    per_call = {size: max(MIN_FRAMES, pixels // size**2) for size in frames}
    return InferWorkload(frames, per_call, BATCH_SIZE, rounds=2 if quick else 5)


def _simulate(config: Config, size: int, n_frames: int, directory: Path) -> Path:
    """One unlabelled scan of ``n_frames`` frames of ``size``², the configured beamline."""
    simulate = config.simulate
    settings = SimulateSettings.model_validate(
        {
            **simulate.model_dump(),
            "out_dir": directory / str(size),
            "n_scans": 1,
            "families": simulate.families[:1],
            "frame_size": size,
            "frames_per_scan": n_frames,
            "probe_diameter_px": simulate.probe_diameter_px * size / simulate.frame_size,
            "frame_rate_hz": None,
            "labels": "none",
        }
    )
    return simulate_scans(settings)[0]


def _reconstruct(scan: Callable[[], ScanPrediction]) -> object:
    return scan().stitch()


def _rate(call: Callable[[], object], items: int, sync: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    sync()
    return items / (time.perf_counter() - started)


def run(
    config: Config, out_dir: Path, quick: bool, work: InferWorkload | None = None
) -> dict[str, Any]:
    """Measure, write ``infer.md`` and ``infer.png`` into ``out_dir``; return the figures.

    ``work`` replaces the suite's own workload (tests run a smaller one)."""
    work = work or workload(config, quick)
    device = resolve_device(config.train.device)
    # predict and infer_scan return host tensors (synchronous); this covers what they leave
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="infer-", dir=out_dir))
    try:
        calls: dict[tuple[int, str], Callable[[], float]] = {}
        for size in work.frames:
            n = work.frames_per_call[size]
            path = _simulate(config, size, n, scratch)
            prep = config.prep.model_copy(update={"input_size": size})
            model = build_model(config.model, size).to(device)
            compiled = build_model(config.model.model_copy(update={"compile": True}), size)
            compiled.load_state_dict(model.state_dict())
            compiled.to(device)
            scan = functools.partial(infer_scan, model, path, prep, device, work.batch_size)
            patches: ScanPrediction = scan()
            inputs = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
            calls[size, "inference"] = functools.partial(
                _rate, functools.partial(predict, model, inputs, device, work.batch_size), n, sync
            )
            calls[size, "compiled_inference"] = functools.partial(
                _rate,
                functools.partial(predict, compiled, inputs, device, work.batch_size),
                n,
                sync,
            )
            calls[size, "stitching"] = functools.partial(_rate, patches.stitch, n, sync)
            calls[size, "end_to_end"] = functools.partial(
                _rate, functools.partial(_reconstruct, scan), n, sync
            )
        rounds = interleaved_rounds(calls, work.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures = [_figures(size, work, rounds) for size in work.frames]
    target = _target(figures, device)
    table = _markdown(figures, target, device)
    write_text(out_dir / "infer.md", table)
    print(table)
    plot = _plot(figures, out_dir / "infer.png")
    return {
        "suite": "infer",
        "quick": quick,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "workload": {
            **asdict(work),
            "model_width": config.model.width,
            "model_depth": config.model.depth,
            "precision": "float32, as ptycl reconstruct",
            "statistic": "median over rounds",
        },
        "figures": [asdict(f) for f in figures],
        "target": target,
        "note": "absolute rates hold for the machine in infer.json only",
        "markdown": str(out_dir / "infer.md"),
        "plots": [str(plot)],
    }


def _figures(
    size: int, work: InferWorkload, rounds: dict[tuple[int, str], list[float]]
) -> InferFigures:
    kinds = ("inference", "stitching", "end_to_end", "compiled_inference")
    by_round = {kind: rounds[size, kind] for kind in kinds}
    inference, stitching, end_to_end, compiled = (median(by_round[kind]) for kind in kinds)
    return InferFigures(
        frame=size,
        frames_per_call=work.frames_per_call[size],
        batch_size=min(work.batch_size, work.frames_per_call[size]),
        inference_frames_per_s=inference,
        stitching_patches_per_s=stitching,
        end_to_end_frames_per_s=end_to_end,
        compiled_inference_frames_per_s=compiled,
        stitching_over_inference=stitching / inference,
        end_to_end_over_inference=end_to_end / inference,
        compiled_over_plain_inference=compiled / inference,
        by_round=by_round,
    )


def _target(figures: list[InferFigures], device: torch.device) -> dict[str, Any]:
    measured = next((f.inference_frames_per_s for f in figures if f.frame == TARGET_FRAME), None)
    on_gpu = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if on_gpu else None
    return {
        "what": f"inference frames/s at {TARGET_FRAME}² on one H100/H200 GPU",
        "frames_per_s": TARGET_FRAMES_PER_S,
        "measured_frames_per_s": measured,
        "measured_on": gpu or "cpu",
        "met": None if measured is None or not on_gpu else measured >= TARGET_FRAMES_PER_S,
        "status": (
            f"measured on {gpu}"
            if on_gpu
            else "only meaningful on a GPU: the figure here is the CPU's, the GPU figure is "
            "still to be measured"
        ),
    }


def _markdown(figures: list[InferFigures], target: dict[str, Any], device: torch.device) -> str:
    rows = [
        [
            f"{f.frame}²",
            f.frames_per_call,
            f.batch_size,
            f.inference_frames_per_s,
            f.stitching_patches_per_s,
            f.end_to_end_frames_per_s,
            f.stitching_over_inference,
            f.end_to_end_over_inference,
            f.compiled_over_plain_inference,
        ]
        for f in figures
    ]
    header = ["frame", "frames", "batch", "inference frames/s", "stitching patches/s"]
    header += ["end-to-end frames/s", "stitching / inference", "end to end / inference"]
    header += ["compiled / plain inference"]
    return (
        f"Reconstruction on {device}; absolute rates hold for the machine in infer.json only.\n\n"
        + markdown_table(header, rows)
        + f"\nTarget: >= {TARGET_FRAMES_PER_S:,.0f} {target['what']}; measured: "
        + (
            "n/a"
            if target["measured_frames_per_s"] is None
            else f"{target['measured_frames_per_s']:,.1f} frames/s on {target['measured_on']}"
        )
        + f" ({target['status']}).\n"
    )


def _plot(figures: list[InferFigures], path: Path) -> Path:
    panel = BarPanel(
        title="frames (patches) per second",
        ylabel="per second (log)",
        categories=[f"{f.frame}²" for f in figures],
        series={
            "inference": [f.inference_frames_per_s for f in figures],
            "stitching": [f.stitching_patches_per_s for f in figures],
            "end to end": [f.end_to_end_frames_per_s for f in figures],
            "inference, compiled": [f.compiled_inference_frames_per_s for f in figures],
        },
        log=True,
    )
    return bar_chart(path, [panel], "Reconstruction: inference, stitching, end to end")
