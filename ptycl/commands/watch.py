"""Watch a beamline directory: follow scans while they are written, train on them, reconstruct.

    ptycl watch DIR -c configs/watch-64.yaml [--polling] [--resume] [--set watch.segment_frames=64]
    mpiexec -n 4 ptycl watch DIR -c configs/watch-64.yaml        # the same, data-parallel

SIGINT/SIGTERM/SIGUSR1 stop at the next optimiser step with a checkpoint; ``--resume``
continues where the watcher stopped. How scans are followed, trained and evaluated:
docs/design.md, "Watch mode".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptycl.commands.options import add_config_arguments
from ptycl.config import load_config
from ptycl.logs import setup_logging
from ptycl.parallel import init_distributed
from ptycl.stream.watch import run_watch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="the directory the scans are written to")
    add_config_arguments(parser)
    parser.add_argument(
        "--polling",
        action="store_true",
        help="poll the directory instead of inotify (NFS, Lustre, GPFS): watch.polling=true",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's checkpoint and ledger (run.output_dir)",
    )


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.polling:
        config = config.model_copy(
            update={"watch": config.watch.model_copy(update={"polling": True})}
        )
    dist = init_distributed(config.train.device)
    setup_logging(config.run.log_level, dist.rank)
    try:
        with dist.fail_fast():
            run_watch(args.directory, config, dist, resume=args.resume)
    finally:
        dist.close()
    return 0
