"""The continual suite: all five strategies over one scan sequence, side by side.

Design notes: docs/design.md.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from ptycl.bench.settings import with_settings
from ptycl.config import Config
from ptycl.errors import PtyclError
from ptycl.eval.plots import plot_cost_per_scan, plot_error_over_time
from ptycl.lifecycle.checkpoint import has_checkpoint
from ptycl.logs import setup_logging
from ptycl.outputs import write_text
from ptycl.train.report import RunReport
from ptycl.train.run import resolve_scans, run_continual

log = logging.getLogger("ptycl.bench")

STRATEGIES = ("incremental", "cumulative", "er", "der", "derpp")
FIRST_SCANS = 2  # "the first scans" whose forgetting the suite reports


def _criteria(reports: dict[str, RunReport]) -> dict[str, dict]:
    phase = {s: r.matrix("phase_mae") for s, r in reports.items()}
    final_average = {s: float(np.nanmean(m[-1])) for s, m in phase.items()}
    incremental = phase["incremental"]
    first = range(min(FIRST_SCANS, incremental.shape[0]))
    best = [np.nanmin(incremental[j:, j]) for j in first]
    final_over_best = [float(incremental[-1, j] / b) for j, b in zip(first, best, strict=True)]
    # Not a criterion, the story behind it: the worst a first scan got at any point after it
    # was learned (a scan later in the run may undo forgetting that the final row hides).
    worst_over_best = [
        float(np.nanmax(incremental[j:, j]) / b) for j, b in zip(first, best, strict=True)
    ]
    samples = {s: [c["samples"] for c in r.costs] for s, r in reports.items()}
    # Cost per scan once the store can replay: on the first scan it starts empty, so the
    # rehearsal strategies replay less there (a one-off, not growth with the scans seen).
    steady = {s: v[1:] if len(v) > 1 else v for s, v in samples.items()}
    return {
        "derpp_phase_error_over_cumulative": {
            "value": final_average["derpp"] / final_average["cumulative"],
            "target": "<= 1.15",
            "met": final_average["derpp"] <= 1.15 * final_average["cumulative"],
        },
        "incremental_first_scans_final_over_best": {
            "value": final_over_best,
            "target": ">= 1.5 on the first scans",
            "met": bool(np.mean(final_over_best) >= 1.5),
            "worst_over_best_during_the_run": worst_over_best,
        },
        "derpp_last_scan_cost_over_cumulative": {
            "value": samples["derpp"][-1] / samples["cumulative"][-1],
            "target": "<= 1/3",
            "met": samples["derpp"][-1] <= samples["cumulative"][-1] / 3,
        },
        "cost_per_scan_last_over_second": {
            "value": {s: v[-1] / v[0] for s, v in steady.items()},
            "first_scan": {s: v[0] for s, v in samples.items()},
            "target": "derpp ~1 (flat), cumulative growing (from the second scan, when the "
            "store can replay from the start)",
            "met": abs(steady["derpp"][-1] / steady["derpp"][0] - 1) < 0.05
            and samples["cumulative"][-1] > 2 * samples["cumulative"][0],
        },
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(reports: dict[str, RunReport], criteria: dict[str, dict]) -> str:
    lines = [
        "| strategy | final phase MAE (rad) | final amplitude MAE | phase forgetting | phase BWT | samples, last scan | samples, total | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in reports.items():
        p, a = r.summary["phase_mae"], r.summary["amplitude_mae"]
        lines.append(
            f"| {s} | {_fmt(p['final_average_error'])} | {_fmt(a['final_average_error'])} | {_fmt(p['mean_forgetting'])} | "
            f"{_fmt(p['backward_transfer'])} | {r.costs[-1]['samples']} | {sum(c['samples'] for c in r.costs)} | "
            f"{sum(c['seconds'] for c in r.costs):.0f} |"
        )
    lines += ["", "| criterion | value | target | met |", "|---|---|---|---|"]
    for name, c in criteria.items():
        value = c["value"]
        shown = (
            ", ".join(f"{k}={v:.2f}" for k, v in value.items())
            if isinstance(value, dict)
            else (
                ", ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else f"{value:.3f}"
            )
        )
        lines.append(f"| {name} | {shown} | {c['target']} | {'yes' if c['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def _train_strategy(config: Config, resume: bool, threads: int | None = None) -> RunReport:
    """One strategy's run; ``threads`` set: in a worker process of its own."""
    if threads is not None:
        torch.set_num_threads(threads)
        setup_logging(config.run.log_level, label=config.train.strategy)
    resume = resume and has_checkpoint(config.run.output_dir / "checkpoints")
    try:
        return run_continual(config, resume=resume)
    except PtyclError as exc:
        # As its message only: the subclasses' own arguments do not survive the pickling
        # that brings a worker's exception back.
        raise PtyclError(f"{config.train.strategy}: {exc}") from None


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
    # Longest first, so the last to finish is not the one that takes longest.
    waiting = sorted(configs, key=lambda s: s != "cumulative")
    log.info("training %d strategies at a time, %d torch thread(s) each", jobs, threads)
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


def run(config: Config, out_dir: Path, quick: bool, jobs: int = 1, resume: bool = False) -> dict:
    if quick:
        config = with_settings(
            config, simulate={"n_scans": 4, "frames_per_scan": 200}, train={"steps_per_scan": 30}
        )
    suite_dir = out_dir / "continual"
    resolve_scans(config)  # simulate once, before the strategies share the scans
    configs = {
        strategy: with_settings(
            config,
            run={"name": strategy, "output_dir": suite_dir / strategy},
            train={"strategy": strategy},
        )
        for strategy in STRATEGIES
    }
    reports = _train_strategies(configs, jobs, resume)
    stopped = {s: r.stopped for s, r in reports.items() if r.stopped}
    stopped |= {s: "not begun" for s in configs if s not in reports}
    if stopped:
        raise PtyclError(
            "bench continual: stopped ("
            + ", ".join(f"{s}: {why}" for s, why in stopped.items())
            + "); continue with --resume"
        )
    criteria = _criteria(reports)
    scan_ids = reports["derpp"].scan_ids
    plot_cost_per_scan(
        {s: [c["samples"] for c in r.costs] for s, r in reports.items()},
        suite_dir / "cost_per_scan.png",
        scan_ids=scan_ids,
        ylabel="samples per scan (new + replayed)",
    )
    plot_error_over_time(
        {s: r.matrix("phase_mae") for s, r in reports.items()},
        scan_ids,
        suite_dir / "phase_error_first_scans.png",
    )
    table = _markdown(reports, criteria)
    write_text(out_dir / "continual.md", table)
    print(table)
    return {
        "suite": "continual",
        "quick": quick,
        "jobs": jobs,
        "scans": scan_ids,
        "criteria": criteria,
        "strategies": {
            s: {"summary": r.summary, "costs": r.costs, "error_rows": r.error_rows}
            for s, r in reports.items()
        },
        "plots": [
            str(suite_dir / "cost_per_scan.png"),
            str(suite_dir / "phase_error_first_scans.png"),
        ],
    }
