"""Continual training over a sequence of scans, each scan one task, in arrival order.

    ptycl train -c configs/continual-64.yaml [--set train.strategy=der] [--resume] [--max-steps N]

Scans come from ``scans:`` in the config (files or directories, in that order), or, when it is
empty, from the simulated beamline described by ``simulate:`` (simulated first if absent).
After each scan the run evaluates every scan seen so far, checkpoints, and at the end writes
metrics (JSON, CSV) and plots under ``run.output_dir``. SIGINT/SIGTERM stop at the next step
with a checkpoint; ``--resume`` continues exactly where the run stopped.

Checkpoints (``ptycl.train.checkpoint``) go to ``run.output_dir/checkpoints`` every
``train.checkpoint_every_steps`` steps and at each scan's end; the last
``train.keep_checkpoints`` are kept, each with a manifest of SHA-256 sums. A run killed at any
moment, SIGKILL included, resumes from its last committed checkpoint; one that was damaged
afterwards is skipped with a warning for the one before. The resumed run ends with the weights
of an uninterrupted one bit for bit (same number of ranks and of torch threads).

Data-parallel on N MPI ranks (one per GPU, or several per CPU node):

    mpiexec -n 4 ptycl train -c configs/continual-64.yaml
    srun --mpi=pmi2 ptycl train -c configs/continual-64.yaml     # Slurm, MPICH (pmix: Open MPI)

Each rank trains on its share of every step's ``train.batch_size`` rows (the batch of all ranks
together), so N ranks take the steps one process would; the rehearsal store is spread over the
ranks (``train.store`` capacities are per rank). The ranks share the evaluation out; rank 0
writes the outputs; each rank checkpoints its store shard. ``--resume`` on the same number of ranks continues exactly; on
another number (above one) the store's samples are redistributed over the new ranks. A rank
that fails ends the job with one line naming the rank and the error.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ptycl.commands.options import add_config_arguments
from ptycl.config import load_config
from ptycl.logs import setup_logging
from ptycl.parallel import init_distributed
from ptycl.train.run import run_continual

log = logging.getLogger("ptycl.train")


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


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    dist = init_distributed(config.train.device)
    setup_logging(config.run.log_level, rank=dist.rank)
    with dist.fail_fast():
        if dist.is_distributed:
            log.info(
                "data-parallel over %d ranks (%s, torch.distributed %s); a step's %d rows are "
                "shared out among them",
                dist.world_size,
                dist.device,
                torch.distributed.get_backend(),
                config.train.batch_size,
            )
        report = run_continual(config, resume=args.resume, max_steps=args.max_steps, dist=dist)
        log.info("%s", report.summary_line())
        dist.close()
    return 0
