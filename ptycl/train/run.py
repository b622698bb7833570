"""Continual training over a sequence of scans, each scan one task, in arrival order.

    ptycl train -c configs/continual-64.yaml [--set train.strategy=der] [--resume] [--max-steps N]

Scans come from ``scans:`` in the config (files or directories, in that order), or, when it is
empty, from the simulated beamline described by ``simulate:`` (simulated first if absent).
After each scan the run evaluates every scan seen so far, checkpoints, and at the end writes
metrics (JSON, CSV) and plots under ``run.output_dir``. SIGINT/SIGTERM stop at the next step
with a checkpoint; ``--resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ptycl.cli import add_config_arguments
from ptycl.config import Config, dump_config, load_config
from ptycl.errors import ScanError
from ptycl.eval.evaluate import ErrorMatrices
from ptycl.logs import setup_logging
from ptycl.train.checkpoint import load_checkpoint, save_checkpoint
from ptycl.train.report import RunReport, write_report
from ptycl.train.scan_data import ScanTensors, load_scan
from ptycl.train.trainer import ContinualTrainer, StreamPosition

log = logging.getLogger("ptycl.train")

SCAN_SUFFIXES = (".h5", ".hdf5", ".cxi", ".zarr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop (with a checkpoint) after N optimiser steps in total, e.g. to fit a batch-job time limit",
    )


def resolve_scans(config: Config) -> list[Path]:
    """The scan files in arrival order: listed ones (directories sorted by name) or simulated."""
    if not config.scans:
        from ptycl.simulate.run import simulate_scans

        return simulate_scans(config.simulate, reuse_existing=True)
    paths: list[Path] = []
    for entry in config.scans:
        if entry.is_dir() and entry.suffix != ".zarr":
            paths += sorted(
                p for p in entry.iterdir() if p.suffix in SCAN_SUFFIXES and ".label" not in p.name
            )
        else:
            paths.append(entry)
    return paths


@dataclass
class _StopRequest:
    """Set by SIGINT/SIGTERM or the step budget; the loop stops at the next step boundary."""

    max_global_steps: int | None = None
    signalled: str | None = None

    def __call__(self, position: StreamPosition | None = None) -> bool:
        if self.signalled is not None:
            return True
        return (
            self.max_global_steps is not None
            and position is not None
            and position.global_step >= self.max_global_steps
        )


def run_continual(config: Config, resume: bool = False, max_steps: int | None = None) -> RunReport:
    """Train through the stream; returns the report (also written under run.output_dir)."""
    output_dir = config.run.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(dump_config(config))
    checkpoint_dir = output_dir / "checkpoints"
    trainer = ContinualTrainer.build(config)
    matrices = ErrorMatrices()
    rejected: list[str] = []
    if resume:
        state = load_checkpoint(checkpoint_dir)
        trainer.load_state_dict(state["trainer"])
        matrices = ErrorMatrices.from_state(state["matrices"])
        rejected = list(state["rejected"])
        position = trainer.state.position
        log.info("resumed at scan %d, step %d", position.scan_index, position.step_in_scan)

    def checkpoint() -> None:
        save_checkpoint(
            checkpoint_dir,
            {
                "trainer": trainer.state_dict(),
                "matrices": matrices.state_dict(),
                "rejected": rejected,
            },
        )

    stop = _StopRequest(max_global_steps=max_steps)
    previous_handlers = {
        s: signal.signal(
            s, lambda signum, _: setattr(stop, "signalled", signal.Signals(signum).name)
        )
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    every = config.train.checkpoint_every_steps

    def on_step(position: StreamPosition) -> None:
        if every and position.global_step % every == 0:
            checkpoint()

    scans: list[ScanTensors] = []
    started = time.perf_counter()
    try:
        for path in resolve_scans(config):
            try:
                scan = load_scan(path, config.prep, seed=config.run.seed + len(scans))
            except ScanError as exc:
                if str(exc) not in rejected:
                    log.error("skipping scan: %s", exc)
                    rejected.append(str(exc))
                continue
            task = len(scans)
            scans.append(scan)
            trainer.arrived(scan)
            if task < trainer.state.position.scan_index:
                continue  # trained on before the resume point
            log.info(
                "scan %d: %s (%d frames, %d held out)",
                task,
                scan.scan_id,
                len(scan),
                len(scan.holdout_rows),
            )
            finished = trainer.train_scan(
                scan, task, should_stop=lambda: stop(trainer.state.position), on_step=on_step
            )
            if not finished:
                checkpoint()
                why = stop.signalled or f"--max-steps {max_steps}"
                log.warning(
                    "stopped (%s) at scan %d step %d; continue with --resume",
                    why,
                    task,
                    trainer.state.position.step_in_scan,
                )
                break
            row = matrices.add_row(trainer.model, scans, trainer.device, trainer.support)
            trainer.state.position = StreamPosition(task + 1, 0, trainer.state.position.global_step)
            checkpoint()
            cost = trainer.state.costs[-1]
            log.info(
                "scan %d done: %d steps, %d samples, %.1f s; phase MAE now %s",
                task,
                cost.steps,
                cost.samples,
                cost.seconds,
                " ".join(f"{v:.3f}" for v in row["phase_mae"]),
            )
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
    report = RunReport.build(
        config, trainer, matrices, rejected, wall_seconds=time.perf_counter() - started
    )
    write_report(report, output_dir)
    return report


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    setup_logging(config.run.log_level)
    report = run_continual(config, resume=args.resume, max_steps=args.max_steps)
    log.info("%s", report.summary_line())
    return 0
