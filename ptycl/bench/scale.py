"""Weak scaling of data-parallel training (``ptycl bench scale``): 1, 2 and 4 ranks.

Design notes: docs/design.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from ptycl.bench.charts import BarPanel, bar_chart
from ptycl.bench.ranks import on_ranks
from ptycl.bench.steps import MODULE, PART_NAMES, StepParts, StepWorkload, part_params
from ptycl.bench.tables import markdown_table
from ptycl.config import Config
from ptycl.outputs import write_text

log = logging.getLogger("ptycl.bench")

RANKS = (1, 2, 4)
THREADS_PER_RANK = 1
TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ScaleWorkload:
    ranks: tuple[int, ...]
    frame: int
    strategy: str
    batch_per_rank: int  # new rows per step on each rank
    replay_per_rank: int  # rows per replay draw on each rank
    launches: int  # rounds of launches: every job size once per round
    rounds: int  # measured rounds within a launch, after one warm-up round
    steps_per_round: int

    def steps(self, ranks: int) -> StepWorkload:
        return StepWorkload(
            (self.strategy,),
            (self.frame,),
            self.batch_per_rank * ranks,
            self.replay_per_rank * ranks,
            self.rounds,
            self.steps_per_round,
        )


@dataclass(frozen=True)
class ScalePoint:
    ranks: int
    batch_size: int  # all ranks together
    replay_batch_size: int  # per draw, all ranks together
    samples_per_s: float  # all ranks together, median over every round of every launch
    samples_per_s_by_round: list[float]
    samples_per_s_per_rank: float
    efficiency: float  # samples_per_s / (ranks x samples_per_s at one rank)
    oversubscribed: bool  # more ranks x threads than cores
    seconds_per_step: StepParts  # mean over launches
    step_s: float


def workload(config: Config, quick: bool) -> ScaleWorkload:
    """Per rank the configured batches (a 1-rank job is the configured run), the configured
    frame size and strategy; quick: a quarter of the batches, one launch, few steps."""
    train = config.train
    if quick:
        return ScaleWorkload(
            RANKS,
            config.prep.input_size,
            train.strategy,
            max(1, train.batch_size // 4),
            max(1, train.replay_batch_size // 4),
            launches=1,
            rounds=2,
            steps_per_round=1,
        )
    return ScaleWorkload(
        RANKS,
        config.prep.input_size,
        train.strategy,
        train.batch_size,
        train.replay_batch_size,
        launches=3,
        rounds=3,
        steps_per_round=2,
    )


def _points(jobs: dict[int, list[dict[str, Any]]], work: ScaleWorkload) -> list[ScalePoint]:
    cores = os.cpu_count() or 1
    rates = {
        n: [r for job in runs for r in job["samples_per_s_by_round"]] for n, runs in jobs.items()
    }
    one_rank = median(rates[1])
    points = []
    for n, runs in jobs.items():
        parts = StepParts.mean([StepParts(**job["seconds_per_step"]) for job in runs])
        rate = median(rates[n])
        steps = work.steps(n)
        points.append(
            ScalePoint(
                ranks=n,
                batch_size=steps.batch_size,
                replay_batch_size=steps.replay_batch_size,
                samples_per_s=rate,
                samples_per_s_by_round=rates[n],
                samples_per_s_per_rank=rate / n,
                efficiency=rate / (n * one_rank),
                oversubscribed=_oversubscribed(n, cores),
                seconds_per_step=parts,
                step_s=sum(asdict(parts).values()),
            )
        )
    return points


def limits(ranks: Sequence[int], cores: int) -> str:
    """What bounds jobs of these sizes on ``cores`` cores, in words (JSON and markdown)."""
    over = [n for n in ranks if _oversubscribed(n, cores)]
    if not over:
        return f"{cores} cores: every rank has a core of its own"
    return (
        f"{cores} cores: {', '.join(map(str, over))} ranks oversubscribe them (more ranks than "
        f"cores, {THREADS_PER_RANK} thread each), so those jobs are bound by the cores, not by "
        f"the all-reduce or the store: efficiency there is at most cores / ranks "
        f"({', '.join(f'{cores / n:.2f} at {n}' for n in over)})"
    )


def _oversubscribed(ranks: int, cores: int) -> bool:
    return ranks * THREADS_PER_RANK > cores


def _markdown(points: list[ScalePoint], work: ScaleWorkload, note: str) -> str:
    rows = [
        [
            p.ranks,
            p.batch_size,
            p.replay_batch_size,
            p.samples_per_s,
            p.samples_per_s_per_rank,
            p.efficiency,
            "yes" if p.oversubscribed else "no",
            p.step_s,
            p.seconds_per_step.allreduce,
        ]
        for p in points
    ]
    header = ["ranks", "batch", "replay draw", "samples/s, all ranks", "samples/s per rank"]
    header += ["efficiency", "oversubscribed", "step s", "allreduce s"]
    return (
        f"Weak scaling, {work.strategy} at {work.frame}², {work.batch_per_rank} rows per rank and "
        f"step, {THREADS_PER_RANK} torch thread per rank; efficiency = samples/s(N) / "
        f"(N x samples/s(1)); batch and replay draw count all ranks together. {note}. "
        "Absolute figures hold for the machine in scale.json only.\n\n"
        + markdown_table(header, rows)
    )


def _plot(points: list[ScalePoint], path: Path) -> Path:
    categories = [f"{p.ranks} rank(s)" for p in points]
    one_rank = next(p.samples_per_s for p in points if p.ranks == 1)
    throughput = BarPanel(
        title="samples/s, all ranks together",
        ylabel="samples/s",
        categories=categories,
        series={
            "measured": [p.samples_per_s for p in points],
            "perfect scaling": [p.ranks * one_rank for p in points],
        },
    )
    efficiency = BarPanel(
        title="parallel efficiency",
        ylabel="samples/s(N) / (N x samples/s(1))",
        categories=categories,
        series={"efficiency": [p.efficiency for p in points]},
        reference=1.0,
    )
    breakdown = BarPanel(
        title="one step on a rank, by part",
        ylabel="seconds per step",
        categories=categories,
        series={part: [getattr(p.seconds_per_step, part) for p in points] for part in PART_NAMES},
        stacked=True,
    )
    return bar_chart(path, [throughput, efficiency, breakdown], "Weak scaling of DDP training")


def run(
    config: Config, out_dir: Path, quick: bool, work: ScaleWorkload | None = None
) -> dict[str, Any]:
    """Measure, write ``scale.md`` and ``scale.png`` into ``out_dir``; return the figures.

    ``work`` replaces the suite's own workload (tests run a smaller one)."""
    work = work or workload(config, quick)
    if 1 not in work.ranks:
        raise ValueError("the scaling workload needs the 1-rank job: efficiency is relative to it")
    jobs: dict[int, list[dict[str, Any]]] = {n: [] for n in work.ranks}
    for launch in range(work.launches):
        for n in work.ranks:  # every size once per round of launches
            job = on_ranks(
                MODULE,
                n,
                "steps",
                part_params(config, work.steps(n)),
                timeout=TIMEOUT_S,
                threads_per_rank=THREADS_PER_RANK,
            )
            jobs[n].append(job["variants"][0])
            log.info("scale bench: launch %d, %d rank(s) done", launch + 1, n)
    points = _points(jobs, work)
    cores = os.cpu_count() or 1
    note = limits(work.ranks, cores)
    table = _markdown(points, work, note)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "scale.md", table)
    print(table)
    plot = _plot(points, out_dir / "scale.png")
    return {
        "suite": "scale",
        "quick": quick,
        "workload": {
            **asdict(work),
            "model_width": config.model.width,
            "model_depth": config.model.depth,
            "threads_per_rank": THREADS_PER_RANK,
            "scaling": "weak: the same batch per rank at every job size",
            "statistic": "median over every round of every launch",
        },
        "cpu_count": cores,
        "limits": note,
        "points": [asdict(p) for p in points],
        "efficiency": {str(p.ranks): p.efficiency for p in points},
        "markdown": str(out_dir / "scale.md"),
        "plots": [str(plot)],
    }
