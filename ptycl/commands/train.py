"""Continual training over a sequence of scans, each scan one task, in arrival order.

    ptycl train -c configs/continual-64.yaml [--set train.strategy=der] [--resume] [--max-steps N]

Design notes: docs/design.md.
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
from ptycl.train.strategies import STRATEGIES

log = logging.getLogger("ptycl.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"train.strategy: one of {', '.join(STRATEGIES)} (ptycl/train/strategies.py)"
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
