"""Labels for scans that have none: ``ptycl label SCAN... [-c CFG] [--probe FILE]``.

Each scan is reconstructed iteratively with pty-chi (LSQML, object and probe refined; ``pip
install -e '.[iterative]'``) under the budgets of the config's ``label`` section, and written
as ``<scan stem>.label.h5`` beside the scan (or under ``--out-dir``): the object, its probe,
pixel size, centre, the probe positions and how it was made. A directory stands for the scans
in it. Exit status 1 when some scan could not be labelled (one line each), 2 when none was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptycl.commands.options import add_config_arguments
from ptycl.config import load_config
from ptycl.io.source import expand_scan_paths
from ptycl.logs import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scans", nargs="+", type=Path, help="scan files or directories")
    add_config_arguments(parser)
    parser.add_argument(
        "--probe",
        type=Path,
        help="initial probe: a .npy array or a label/reconstruction file with a probe "
        "(default: a disc of the diameter in the scan's metadata or label.probe_diameter_px)",
    )
    parser.add_argument("--out-dir", type=Path, help="write the labels here (default: beside)")


def main(args: argparse.Namespace) -> int:
    from ptycl.label.label_scans import label_scans

    config = load_config(args.config, args.overrides)
    setup_logging(config.run.log_level)
    paths = expand_scan_paths(args.scans)
    failed = label_scans(paths, config.label, args.probe, args.out_dir)
    return 0 if failed == 0 else 2 if failed == len(paths) else 1
