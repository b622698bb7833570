"""Simulate a beamline: write scans as HDF5 (CXI layout) or Zarr, optionally in real time.

    ptycl simulate -c configs/continual-64.yaml [--set simulate.frame_rate_hz=200] [--reuse-existing]

Scan i is ``simulate.out_dir/scanNNNN_FAMILY.h5`` (or ``.zarr``), its random numbers drawn from
(simulate.seed, i), so any scan can be regenerated alone. Labels (the true object) go in the
scan file, in ``scanNNNN_FAMILY.label.h5`` beside it, or nowhere (``simulate.labels``). With
``simulate.frame_rate_hz`` set, each scan is written frame by frame at that rate, readable
while it grows and marked complete only after its last frame; a separate label follows it.
"""

from __future__ import annotations

import argparse

from ptycl.commands.options import add_config_arguments
from ptycl.config import load_config
from ptycl.logs import setup_logging
from ptycl.simulate.run import simulate_scans


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--reuse-existing",
        action="store_true",
        help="keep scans already on disk that are complete and were simulated with the same settings",
    )


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    setup_logging(config.run.log_level)
    simulate_scans(config.simulate, reuse_existing=args.reuse_existing)
    return 0
