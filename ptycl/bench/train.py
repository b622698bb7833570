"""Training throughput (``ptycl bench train``): incremental and DER++ steps side by side.

Design notes: docs/design.md.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptycl.bench.charts import BarPanel, bar_chart
from ptycl.bench.ranks import on_ranks
from ptycl.bench.steps import (
    MODULE,
    PART_NAMES,
    StepWorkload,
    job_description,
    measure,
    part_params,
)
from ptycl.bench.tables import markdown_table
from ptycl.config import Config
from ptycl.outputs import write_text
from ptycl.parallel import Distributed, resolve_device

log = logging.getLogger("ptycl.bench")

STRATEGIES = ("incremental", "derpp")
FRAMES = (64, 128)
RANKS = (1, 2)
TARGET_RATIO = 0.95  # derpp samples/s over incremental samples/s, at least
TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Ratio:
    ranks: int
    frame: int
    derpp_over_incremental: float  # samples/s
    target: float
    met: bool


@dataclass(frozen=True)
class CompiledRatio:
    ranks: int
    frame: int
    strategy: str
    compiled_over_plain: float  # samples/s with model.compile over without


def workload(config: Config, quick: bool) -> StepWorkload:
    """The configured batches and several rounds; quick: a quarter of the batches (at least
    one row per rank of the largest job), one step a round."""
    train = config.train
    if quick:
        return StepWorkload(
            STRATEGIES,
            FRAMES,
            max(max(RANKS), train.batch_size // 4),
            max(max(RANKS), train.replay_batch_size // 4),
            rounds=2,
            steps_per_round=1,
        )
    return StepWorkload(
        STRATEGIES,
        FRAMES,
        train.batch_size,
        train.replay_batch_size,
        rounds=5,
        steps_per_round=3,
        compiled_strategies=("derpp",),
    )


def _job(config: Config, work: StepWorkload, ranks: int) -> dict[str, Any]:
    """One job's figures: one rank in this process, more under mpiexec."""
    if ranks == 1:
        dist = Distributed.single(resolve_device(config.train.device))
        return {
            **job_description(dist),
            "variants": [asdict(r) for r in measure(config, work, dist)],
        }
    return on_ranks(MODULE, ranks, "steps", part_params(config, work), timeout=TIMEOUT_S)


def _rates(job: dict[str, Any]) -> dict[tuple[str, int, bool], float]:
    return {(v["strategy"], v["frame"], v["compiled"]): v["samples_per_s"] for v in job["variants"]}


def _ratios(jobs: list[dict[str, Any]], frames: tuple[int, ...]) -> list[Ratio]:
    ratios = []
    for job in jobs:
        rate = _rates(job)
        for frame in frames:
            value = rate["derpp", frame, False] / rate["incremental", frame, False]
            ratios.append(Ratio(job["ranks"], frame, value, TARGET_RATIO, value >= TARGET_RATIO))
    return ratios


def _compiled_ratios(jobs: list[dict[str, Any]], work: StepWorkload) -> list[CompiledRatio]:
    return [
        CompiledRatio(
            job["ranks"],
            frame,
            strategy,
            _rates(job)[strategy, frame, True] / _rates(job)[strategy, frame, False],
        )
        for job in jobs
        for frame in work.frames
        for strategy in work.compiled_strategies
    ]


def _name(variant: dict[str, Any]) -> str:
    return variant["strategy"] + (", compiled" if variant["compiled"] else "")


def _label(variant: dict[str, Any]) -> str:
    return f"{variant['ranks']}r {variant['frame']}² {_name(variant)}"


def _markdown(
    jobs: list[dict[str, Any]],
    ratios: list[Ratio],
    compiled: list[CompiledRatio],
    machine_note: str,
) -> str:
    rows = [
        [
            v["ranks"],
            job["torch_threads_per_rank"],
            f"{v['frame']}²",
            _name(v),
            v["samples_per_step"],
            v["samples_per_s"],
            *(v["seconds_per_step"][part] for part in PART_NAMES),
            v["step_s"],
        ]
        for job in jobs
        for v in job["variants"]
    ]
    header = ["ranks", "threads/rank", "frame", "strategy", "samples/step", "samples/s"]
    header += [f"{part} s" for part in PART_NAMES] + ["step s"]
    ratio_rows = [
        [r.ranks, f"{r.frame}²", r.derpp_over_incremental, f">= {r.target}", r.met] for r in ratios
    ]
    compiled_rows = [[c.ranks, f"{c.frame}²", c.strategy, c.compiled_over_plain] for c in compiled]
    compiled_table = (
        "\n"
        + markdown_table(
            ["ranks", "frame", "strategy", "compiled / plain samples/s"], compiled_rows
        )
        if compiled
        else ""
    )
    return (
        f"Training steps, samples/s (new + replayed) and seconds per step by part; {machine_note}\n\n"
        + markdown_table(header, rows)
        + "\n"
        + markdown_table(
            ["ranks", "frame", "derpp / incremental samples/s", "target", "met"], ratio_rows
        )
        + compiled_table
    )


def _plot(jobs: list[dict[str, Any]], path: Path) -> Path:
    variants = [v for job in jobs for v in job["variants"]]
    groups = sorted({(v["ranks"], v["frame"]) for v in variants})
    rate = {(v["ranks"], v["frame"], _name(v)): v["samples_per_s"] for v in variants}
    names = list(dict.fromkeys(_name(v) for v in variants))
    throughput = BarPanel(
        title="samples/s (new + replayed)",
        ylabel="samples/s",
        categories=[f"{ranks} rank(s), {frame}²" for ranks, frame in groups],
        series={n: [rate[ranks, frame, n] for ranks, frame in groups] for n in names},
    )
    breakdown = BarPanel(
        title="one step, by part",
        ylabel="seconds per step",
        categories=[_label(v) for v in variants],
        series={part: [v["seconds_per_step"][part] for v in variants] for part in PART_NAMES},
        stacked=True,
    )
    return bar_chart(path, [throughput, breakdown], "Training steps: incremental and DER++")


def run(
    config: Config,
    out_dir: Path,
    quick: bool,
    work: StepWorkload | None = None,
    ranks: tuple[int, ...] = RANKS,
) -> dict[str, Any]:
    """Measure, write ``train.md`` and ``train.png`` into ``out_dir``; return the figures.

    ``work`` and ``ranks`` replace the suite's own workload (tests run a smaller one)."""
    work = work or workload(config, quick)
    jobs = []
    for n in ranks:
        jobs.append(_job(config, work, n))
        log.info("train bench: %d rank(s) done", n)
    ratios = _ratios(jobs, work.frames)
    compiled = _compiled_ratios(jobs, work)
    note = "absolute times hold for the machine in train.json only"
    table = _markdown(jobs, ratios, compiled, note)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "train.md", table)
    print(table)
    plot = _plot(jobs, out_dir / "train.png")
    return {
        "suite": "train",
        "quick": quick,
        "workload": {
            **asdict(work),
            "model_width": config.model.width,
            "model_depth": config.model.depth,
            "store_capacity_samples_per_rank": config.train.store.capacity_samples,
            "store_capacity_bytes_per_rank": config.train.store.capacity_bytes,
            "batch_sizes": "all ranks together, as train.batch_size / train.replay_batch_size",
            "statistic": "median over rounds of samples/s; seconds per step: mean over steps and ranks",
        },
        "parts": {
            "data": "step start to the first forward: batch gathered and moved to the device",
            "replay_draw": "store draws, with the drawn batch moved to the device",
            "forward_backward": "first forward to optimiser step, less draws and all-reduce",
            "allreduce": "DDP gradient all-reduce not hidden behind backward: last bucket "
            "launched to all completed",
            "optimizer": "optimizer.step()",
            "store_offer": "after the optimiser: outputs to the CPU, offer to the store",
        },
        "jobs": jobs,
        "ratios": [asdict(r) for r in ratios],
        "compiled_over_plain": [asdict(c) for c in compiled],
        "target": f"derpp samples/s >= {TARGET_RATIO} x incremental samples/s",
        "note": note,
        "markdown": str(out_dir / "train.md"),
        "plots": [str(plot)],
    }
