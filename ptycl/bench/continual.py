"""The continual suite: every strategy over the same scan streams, side by side, over paired
seeds, with the verdict of the continual claim.

Design notes: docs/design.md.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from ptycl.bench.settings import with_settings
from ptycl.bench.verdict import ERROR, StreamResult, criteria, strategy_table
from ptycl.bench.verdict_markdown import verdict_markdown
from ptycl.config import Config, dump_config
from ptycl.errors import ConfigError, PtyclError
from ptycl.eval.plots import (
    METRIC_LABELS,
    plot_costs,
    plot_error_against_cost,
    plot_error_over_time,
)
from ptycl.lifecycle.checkpoint import has_checkpoint
from ptycl.logs import setup_logging
from ptycl.outputs import write_text
from ptycl.train.report import RunReport
from ptycl.train.run import resolve_scans, run_continual

log = logging.getLogger("ptycl.bench")

STRATEGIES = (
    "incremental",
    "cumulative",
    "er",
    "der",
    "derpp",
    "full_replay",
    "fresh",
    "joint",
)
# Started first within a stream, so the last to finish is not the longest.
LONGEST_FIRST = ("cumulative", "joint", "full_replay", "derpp")


def _train_strategy(config: Config, resume: bool, threads: int | None = None) -> RunReport:
    """One strategy's run; ``threads`` set: in a worker process of its own. The first
    stream's runs draw their plots; the others write their numbers only."""
    if threads is not None:
        torch.set_num_threads(threads)
        setup_logging(config.run.log_level, label=config.train.strategy)
    if resume and (finished := _finished(config)) is not None:
        return finished
    resume = resume and has_checkpoint(config.run.output_dir / "checkpoints")
    try:
        return run_continual(config, resume=resume, plots=config.run.name.startswith("seed-0/"))
    except PtyclError as exc:
        # As its message only: the subclasses' own arguments do not survive the pickling
        # that brings a worker's exception back.
        raise PtyclError(f"{config.run.name}: {exc}") from None


def _finished(config: Config) -> RunReport | None:
    """The report of a run that went through under this very config (its ``config.yaml``
    the same), read from its ``metrics.json``; None for any other: a resumed suite reads
    finished runs back without loading a scan."""
    out = config.run.output_dir
    try:
        same = (out / "config.yaml").read_text() == dump_config(config)
        report = RunReport.read(out / "metrics.json") if same else None
    except (OSError, ValueError, TypeError):
        return None
    return report if report is not None and report.stopped is None else None


class _SuiteStop:
    """Ctrl-C, SIGTERM or SIGUSR1 to the suite's process: passed on to the workers (each
    strategy stops at its next step with a checkpoint, by ``run_continual``'s own handlers),
    and no strategy starts after it."""

    def __init__(self) -> None:
        self.signalled: str | None = None

    def __call__(self, signum: int, _frame: object = None) -> None:
        self.signalled = signal.Signals(signum).name
        for child in multiprocessing.active_children():
            if child.pid is not None:
                os.kill(child.pid, signum)


def _train_strategies(configs: dict[str, Config], jobs: int, resume: bool) -> dict[str, RunReport]:
    """The report of every strategy that ran, in ``configs``' order; ``jobs`` at a time. A
    stop (a signal, or a strategy that failed) leaves the ones not begun out."""
    if jobs == 1:
        reports = {}
        for strategy, config in configs.items():
            reports[strategy] = _train_strategy(config, resume)
            if reports[strategy].stopped:  # Ctrl-C / SIGTERM ends the suite, not one strategy
                break
            log.info("%s", reports[strategy].summary_line())
        return reports
    threads = max(1, torch.get_num_threads() // jobs)

    def order(run: str) -> tuple[int, int]:
        """Stream by stream (a suite stopped early leaves whole streams to read back), the
        longest strategy first within each."""
        strategy = configs[run].train.strategy
        rank = LONGEST_FIRST.index(strategy) if strategy in LONGEST_FIRST else len(LONGEST_FIRST)
        return configs[run].run.seed, rank

    waiting = sorted(configs, key=order)
    log.info("training %d runs at a time, %d torch thread(s) each", jobs, threads)
    stop = _SuiteStop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    done: dict[str, RunReport] = {}
    failure: BaseException | None = None
    try:
        # spawn: a fresh interpreter per worker, not a fork of this one's torch threads. A
        # strategy is handed to the pool only when a worker is free, so none waits queued
        # where a stop could not take it back.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            running: dict[Future[RunReport], str] = {}

            def may_start() -> bool:
                return bool(waiting) and stop.signalled is None and failure is None

            while running or may_start():
                while may_start() and len(running) < jobs:
                    strategy = waiting.pop(0)
                    running[pool.submit(_train_strategy, configs[strategy], resume, threads)] = (
                        strategy
                    )
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    strategy = running.pop(future)
                    if future.exception() is None:
                        done[strategy] = future.result()
                        log.info("%s", done[strategy].summary_line())
                    elif failure is None:  # the others stop, with a checkpoint to resume
                        failure = future.exception()
                        stop(signal.SIGTERM)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failure is not None:
        raise failure
    return {s: done[s] for s in configs if s in done}


def stream_configs(config: Config, seeds: int, suite_dir: Path) -> list[Config]:
    """One config per stream: simulation and run seed moved on together by the stream's
    index, each stream's scans in a directory of their own."""
    return [
        with_settings(
            config,
            simulate={
                "seed": config.simulate.seed + k,
                "out_dir": config.simulate.out_dir / f"seed-{config.simulate.seed + k}",
            },
            run={"seed": config.run.seed + k, "output_dir": suite_dir / f"seed-{k}"},
        )
        for k in range(seeds)
    ]


def run(
    config: Config,
    out_dir: Path,
    quick: bool,
    jobs: int = 1,
    resume: bool = False,
    seeds: int = 1,
    command: str = "",
    strategies: list[str] | None = None,
) -> dict:
    if quick:
        config = with_settings(
            config, simulate={"n_scans": 4, "frames_per_scan": 200}, train={"steps_per_scan": 30}
        )
    strategies = list(strategies or STRATEGIES)
    if unknown := [s for s in strategies if s not in STRATEGIES]:
        raise ConfigError(
            "ptycl bench continual",
            "--strategies",
            f"{', '.join(unknown)}: choose among {', '.join(STRATEGIES)}",
        )
    suite_dir = out_dir / "continual"
    streams = stream_configs(config, seeds, suite_dir)
    configs = run_configs(streams, strategies)
    reports = _train_strategies(configs, jobs, resume)
    stopped = {s: r.stopped for s, r in reports.items() if r.stopped}
    stopped |= {s: "not begun" for s in configs if s not in reports}
    if stopped:
        raise PtyclError(
            "bench continual: stopped ("
            + ", ".join(f"{s}: {why}" for s, why in stopped.items())
            + "); continue with --resume"
        )
    by_stream = [
        {strategy: reports[f"seed-{k}/{strategy}"] for strategy in strategies} for k in range(seeds)
    ]
    results = [{s: StreamResult.of(r) for s, r in stream.items()} for stream in by_stream]
    verdict = {
        "command": command,
        "seeds": seeds,
        "streams": [{"simulate_seed": c.simulate.seed, "run_seed": c.run.seed} for c in streams],
        "error": ERROR,
        "criteria": criteria(results),
        "strategies": strategy_table(results),
    }
    plots = _plots(by_stream, verdict["strategies"], suite_dir)
    table = verdict_markdown(verdict)
    write_text(out_dir / "continual.md", table)
    write_text(out_dir / "verdict.json", json.dumps(verdict, indent=2, allow_nan=False))
    print(table)
    return {"suite": "continual", "quick": quick, "jobs": jobs, **_json(by_stream, verdict, plots)}


def _json(by_stream: list[dict[str, RunReport]], verdict: dict, plots: list[Path]) -> dict:
    """The suite's JSON beside the verdict: each stream's runs, summaries and costs."""
    return {
        "scans": next(iter(by_stream[0].values())).scan_ids,
        **verdict,
        "runs": [
            {
                s: {"summary": r.summary, "costs": r.costs, "constants": r.constants}
                for s, r in stream.items()
            }
            for stream in by_stream
        ],
        "plots": [str(p) for p in plots],
    }


def run_configs(streams: list[Config], strategies: list[str]) -> dict[str, Config]:
    """ "seed-k/strategy" -> its run's config, every strategy on every stream (each stream's
    scans simulated first, once, before the strategies share them)."""
    configs = {}
    for k, stream in enumerate(streams):
        resolve_scans(stream)
        for strategy in strategies:
            configs[f"seed-{k}/{strategy}"] = with_settings(
                stream,
                run={
                    "name": f"seed-{k}/{strategy}",
                    "output_dir": stream.run.output_dir / strategy,
                },
                train={"strategy": strategy, **strategy_settings(strategy, stream)},
            )
    return configs


def strategy_settings(strategy: str, stream: Config) -> dict:
    """Settings a strategy needs beyond its name: full replay's store holds every frame of
    the stream, so it replays from all the data seen."""
    if strategy != "full_replay" or stream.scans:
        return {}
    frames = stream.simulate.n_scans * stream.simulate.frames_per_scan
    store = stream.train.store.model_copy(
        update={"capacity_samples": frames, "capacity_bytes": None}
    )
    return {"store": store}


def _plots(by_stream: list[dict[str, RunReport]], table: dict, suite_dir: Path) -> list[Path]:
    """The first stream's cost per scan and error over time (with each scan's constant
    patch), and the final error of every strategy against its total cost."""
    first = by_stream[0]
    scan_ids = next(iter(first.values())).scan_ids
    return [
        *plot_costs({s: r.costs for s, r in first.items()}, suite_dir, scan_ids),
        plot_error_over_time(
            {s: r.matrix(ERROR) for s, r in first.items()},
            scan_ids,
            suite_dir / f"{ERROR}_first_scans.png",  # the name `ptycl train` gives its own
            first_k=len(scan_ids),
            title="Error on every scan as training goes on (the first stream)",
            metric=METRIC_LABELS[ERROR],
            constants=next(iter(first.values())).constant(ERROR),
        ),
        plot_error_against_cost(
            {
                s: (row["samples_total"], row["final_error"])
                for s, row in table.items()
                if "samples_total" in row
            },
            table["constant patch"]["final_error"]["mean"],
            suite_dir / "error_against_cost.png",
        ),
    ]
