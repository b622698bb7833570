"""Continual training over a sequence of scans, each scan one task, in arrival order:
``run_continual``, the work of ``ptycl train``."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from ptycl.config import Config
from ptycl.errors import CheckpointError, ConfigError, NothingToDoError, ScanError, printable
from ptycl.eval.evaluate import ErrorMatrices, holdout_errors, stitch_scan
from ptycl.eval.plots import plot_reconstruction
from ptycl.io.records import ScanMetadata, distinct_scan_id
from ptycl.io.source import expand_scan_paths
from ptycl.lifecycle.run import RunLifecycle
from ptycl.logs import Progress
from ptycl.parallel import Distributed, resolve_device
from ptycl.prep.frames import input_size_problem
from ptycl.prep.scan_data import ScanTensors, load_scan
from ptycl.train.disk_use import bytes_under, estimate_disk_use, megabytes
from ptycl.train.report import RunReport, write_report
from ptycl.train.trainer import ContinualTrainer, StreamPosition

log = logging.getLogger("ptycl.train")


def resolve_scans(config: Config) -> list[Path]:
    """The scan files in arrival order: listed ones (directories sorted by name) or simulated."""
    if not config.scans:
        from ptycl.simulate.run import simulate_scans

        frame_size = config.simulate.frame_size
        if problem := input_size_problem((frame_size, frame_size), config.prep.input_size):
            # Said before simulating: every simulated scan would be refused after the work.
            raise ConfigError("<config>", "prep.input_size", f"simulate.frame_size: {problem}")
        return simulate_scans(config.simulate, reuse_existing=True)
    return expand_scan_paths(config.scans)  # may be empty: said after the ranks agree


def run_continual(
    config: Config,
    resume: bool = False,
    max_steps: int | None = None,
    dist: Distributed | None = None,
    plots: bool = True,
) -> RunReport:
    """Train through the stream; returns the report (also written under run.output_dir, with
    its tables and plots unless ``plots`` is False).

    ``dist``: this process's place in a data-parallel job (``init_distributed``); None for a
    run in this process alone. In a job, every rank calls this at the same time: rank 0 picks
    the scans, logs and writes the outputs and the model checkpoint; every rank trains its
    share, evaluates its share of the scans and checkpoints its store shard; all return the
    same report.
    """
    dist = dist or Distributed.single(resolve_device(config.train.device))
    lifecycle = RunLifecycle(config, dist, "ptycl train")
    output_dir, checkpoint_dir = lifecycle.output_dir, lifecycle.checkpoint_dir
    trainer = ContinualTrainer.build(config, dist)
    matrices = ErrorMatrices()
    rejected: list[str] = []
    if resume:
        state, old_store_shards = lifecycle.load()
        trainer.load_state_dict(state["trainer"], store_shards=old_store_shards)
        matrices = ErrorMatrices.from_state(state["matrices"])
        rejected = list(state["rejected"])
        position = trainer.state.position
        log.info(
            "resumed at scan %d, step %d (saved by %d rank(s), now %d)",
            position.scan_index,
            position.step_in_scan,
            state.get("ranks", 1),
            dist.world_size,
        )
    lifecycle.began()
    lifecycle.states = {
        "trainer": trainer.state_dict,
        "matrices": lambda: matrices.state_dict(),
        "rejected": lambda: rejected,
    }
    checkpoint = lifecycle.checkpoint
    every = config.train.checkpoint_every_steps

    def on_step(position: StreamPosition) -> None:
        shown.update()
        if every and position.global_step % every == 0:
            checkpoint()

    def budget_spent() -> bool:
        return max_steps is not None and trainer.state.position.global_step >= max_steps

    def should_stop() -> bool:
        return lifecycle.should_stop(also=budget_spent())

    scans: list[ScanTensors] = []
    stopped: str | None = None
    started = time.perf_counter()
    if dist.is_main:
        planned = len(expand_scan_paths(config.scans)) if config.scans else config.simulate.n_scans
        trainer.scans_in_stream = planned  # the estimate counts steps, which 'joint' plans by it
        log.info("%s", estimate_disk_use(config, trainer, planned).line())
    # Rank 0 lists (or simulates) the scans: every rank then reads the same ones, in order.
    paths = dist.broadcast(resolve_scans(config) if dist.is_main else None)
    trainer.scans_in_stream = len(paths)
    usable = len(paths)  # less the scans skipped: the steps the progress counts up to

    def steps_of_run() -> int:
        return sum(trainer.steps_for_scan(i) for i in range(usable))

    shown = Progress(
        config.train.strategy,
        steps_of_run(),
        unit="steps",
        initial=trainer.state.position.global_step,
        rank=dist.rank,
        logger=log,
    )
    with lifecycle.stop, shown:
        _check_store_holds_every_scan(config, trainer, len(paths), dist)
        for path in paths:
            scan, problem = None, None
            try:
                scan = load_scan(
                    path,
                    config.prep,
                    seed=config.run.seed + len(scans),
                    positions=config.io.position_convention,
                )
            except ScanError as exc:
                problem = str(exc)
            # A scan one rank cannot read is skipped by all, with that rank's reason.
            problem = next((p for p in dist.allgather(problem) if p is not None), None)
            if problem is not None:
                usable -= 1
                shown.describe(shown.desc, steps_of_run())
                if problem not in rejected:
                    if dist.is_main:
                        log.error("skipping scan: %s", problem)
                    rejected.append(problem)
                continue
            scan.metadata = _told_apart(scan.metadata, path, {s.scan_id for s in scans})
            task = len(scans)
            if resume:
                _check_resumed_scan(scan.scan_id, task, trainer, matrices, checkpoint_dir)
            scans.append(scan)
            trainer.arrived(scan)
            if task < trainer.state.position.scan_index:
                continue  # trained on before the resume point
            log.info(
                "scan %d: %s (%d frames: %d to train on, %d held out, %d in the guard band)",
                task,
                scan.scan_id,
                len(scan),
                len(scan.train_rows),
                len(scan.holdout_rows),
                len(scan) - len(scan.train_rows) - len(scan.holdout_rows),
            )
            shown.describe(f"{config.train.strategy} {scan.scan_id} ({task + 1}/{usable})")
            finished = trainer.train_scan(scan, task, should_stop=should_stop, on_step=on_step)
            if not finished:
                checkpoint()
                budget = budget_spent() and f"--max-steps {max_steps}"
                stopped = lifecycle.stop.signalled or budget or "another rank was signalled"
                if dist.is_main:
                    log.warning(
                        "stopped (%s) at scan %d step %d; continue with --resume",
                        stopped,
                        task,
                        trainer.state.position.step_in_scan,
                    )
                break
            # The ranks share the evaluation out; every rank gets the row.
            row = matrices.add_row(trainer.model, scans, trainer.device, dist)
            trainer.state.position = StreamPosition(task + 1, 0, trainer.state.position.global_step)
            checkpoint()
            cost = trainer.state.costs[-1]
            if dist.is_main:
                log.info(
                    "scan %d done: %d steps, %d samples, %.1f s; offset-free phase MAE now %s "
                    "rad (constant patch %s), phase skill %s, amplitude skill %s",
                    task,
                    cost.steps,
                    cost.samples,
                    cost.seconds,
                    " ".join(f"{v:.3f}" for v in row["phase_offset_free_mae"]),
                    " ".join(f"{v:.3f}" for v in _constants(matrices, scans)),
                    " ".join(f"{v:.2f}" for v in row["phase_skill"]),
                    " ".join(f"{v:.2f}" for v in row["amplitude_skill"]),
                )
    trainer.close()
    if not scans and stopped is None:
        # A run that trained on nothing must not look like one that succeeded (a metrics.json
        # of NaN, exit 0): every rank raises the same, after the collective close.
        raise NothingToDoError(_nothing_trained(config, paths, rejected))
    unseen = _unseen_errors(config, trainer) if stopped is None and dist.is_main else {}
    report = RunReport.build(
        config,
        trainer,
        matrices,
        rejected,
        wall_seconds=time.perf_counter() - started,
        stopped=stopped,
        unseen=unseen,
    )
    if dist.is_main:
        write_report(report, output_dir, tables_and_plots=plots)
        if stopped is None and plots:  # a stopped run is to resume, and soon: no plots
            _plot_reconstructions(trainer, scans, output_dir / "plots")
    return report


def _told_apart(metadata: ScanMetadata, path: Path, taken: set[str]) -> ScanMetadata:
    """A scan whose id an earlier scan of the run holds (a copy) gets an id of its own."""
    scan_id = distinct_scan_id(metadata.scan_id, path.name, taken)
    if scan_id == metadata.scan_id:
        return metadata
    log.warning(
        "%s: scan id %s is an earlier scan's too (a copy?); called %s in this run",
        printable(path),
        printable(metadata.scan_id),
        printable(scan_id),
    )
    return replace(metadata, scan_id=scan_id)


def _nothing_trained(config: Config, paths: list[Path], rejected: list[str]) -> str:
    where = ", ".join(str(p) for p in config.scans) or str(config.simulate.out_dir)
    if not paths:
        return f"{where}: no scan files in it: nothing trained"
    return (
        f"none of the {len(paths)} scan(s) in {where} could be used (each named above): "
        "nothing trained"
    )


def _unseen_errors(config: Config, trainer: ContinualTrainer) -> dict[str, dict[str, float]]:
    """The final model on the simulated scans of each domain that the stream never trained on
    (``simulate.unseen_scans_per_domain``), every frame of each held out: scan id -> errors
    and skills against the scan's constant patch. Empty for listed scans."""
    if config.scans or not config.simulate.unseen_scans_per_domain:
        return {}
    from ptycl.simulate.run import unseen_scan_paths

    out = {}
    for path in (p for domain in unseen_scan_paths(config.simulate) for p in domain):
        try:
            scan = load_scan(path, config.prep, seed=config.run.seed)
        except ScanError as exc:
            log.error("unseen scan skipped: %s", exc)
            continue
        scan.holdout_rows = torch.arange(len(scan))  # never trained on: all of it scores
        out[scan.scan_id] = holdout_errors(trainer.model, scan, trainer.device)
        log.info(
            "unseen scan %s: offset-free phase MAE %.3f rad, phase skill %.2f",
            scan.scan_id,
            out[scan.scan_id]["phase_offset_free_mae"],
            out[scan.scan_id]["phase_skill"],
        )
    return out


def _constants(matrices: ErrorMatrices, scans: list[ScanTensors]) -> list[float]:
    """The offset-free phase MAE of each scan's constant patch (NaN: none held out)."""
    return [
        matrices.constants.get(s.scan_id, {}).get("phase_offset_free_mae", math.nan) for s in scans
    ]


def _check_store_holds_every_scan(
    config: Config, trainer: ContinualTrainer, scans: int, dist: Distributed
) -> None:
    """The balanced policy keeps a slot per scan on every shard: said before training, not
    when the scan past the last slot arrives hours later."""
    if config.train.store.policy != "balanced" or trainer.store is None:
        return
    slots = trainer.store.capacity // dist.world_size
    if scans > slots:
        raise ConfigError(
            "<config>",
            "train.store.policy",
            f"'balanced' needs a slot per scan and the store has {slots} per rank for "
            f"{scans} scans: raise train.store.capacity_samples, or use 'reservoir'",
        )


def _check_resumed_scan(
    scan_id: str,
    task: int,
    trainer: ContinualTrainer,
    matrices: ErrorMatrices,
    checkpoint_dir: Path,
) -> None:
    """A resumed run must meet the scans it trained on again, in the same order: another
    stream would be continued with a store and error matrices that belong to the first."""
    position = trainer.state.position
    if task < position.scan_index:
        trained = matrices.scan_ids[task]
    elif task == position.scan_index and position.step_in_scan > 0:
        trained = trainer.state.costs[-1].scan_id  # the scan stopped in the middle
    else:
        return  # a scan the run had not reached: the stream goes on
    if scan_id != trained:
        raise CheckpointError(
            checkpoint_dir,
            f"scan {task} of the run was {trained}, and this stream has {scan_id} there: "
            "resume with the same scans in the same order",
        )


def outputs_line(report: RunReport, output_dir: Path) -> str:
    """The run's last line: where its outputs are, and the picture to open first."""
    if report.stopped is not None:
        return f"stopped: checkpoint and report in {output_dir}; continue with --resume"
    first = output_dir / "plots" / f"reconstruction_{report.scan_ids[0]}.png"
    return (
        f"outputs in {output_dir} ({megabytes(bytes_under(output_dir))}): metrics.json, "
        f"R_*.csv, plots/, checkpoints/; open {first} first (the first scan stitched by the "
        "final model, beside its truth)"
    )


def _plot_reconstructions(trainer: ContinualTrainer, scans: list[ScanTensors], plots: Path) -> None:
    """The first and the newest scan stitched with the final model, beside their truth: what
    the model still knows of the oldest data, and what it learnt last."""
    for scan in {id(s): s for s in (scans[:1] + scans[-1:])}.values():
        stitched = stitch_scan(trainer.model, scan, trainer.device)
        plot_reconstruction(
            stitched.image,
            scan.truth,
            stitched.covered,
            plots / f"reconstruction_{scan.scan_id}.png",
            title=f"{scan.scan_id} after the last scan",
        )
