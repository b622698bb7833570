"""Run benchmark suites: ``ptycl bench SUITE [-c CONFIG] [--quick] [--out DIR]``
(``continual`` also takes ``--seeds N``, ``--jobs N`` and ``--resume``).

Suites measure their comparisons side by side in one run and report ratios; absolute times
are only meaningful on the machine named in the JSON (``machine`` field).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from ptycl.commands.options import add_config_arguments
from ptycl.config import load_config
from ptycl.errors import ConfigError
from ptycl.logs import progress, setup_logging
from ptycl.outputs import write_text

log = logging.getLogger("ptycl.bench")

SUITES = {
    "continual": "ptycl.bench.continual",  # strategies side by side: accuracy, forgetting, cost
    "ingest": "ptycl.bench.ingest",  # scan files -> normalised batches, beside a raw read
    "kernels": "ptycl.bench.kernels",  # selection kernels, candidates/s
    "store": "ptycl.bench.store",  # kernels, global draw latency at 1/2/4 ranks, step with replay
    "train": "ptycl.bench.train",  # samples/s of incremental and DER++ steps, step by part
    "scale": "ptycl.bench.scale",  # weak scaling of DDP training at 1/2/4 ranks, efficiency
    "infer": "ptycl.bench.infer",  # reconstruction frames/s: inference, stitching, end to end
    "watch": "ptycl.bench.watch",  # the frame rate `ptycl watch` sustains, 1 and 2 ranks
    "label": "ptycl.bench.label",  # iterative labels vs truth; solver vs network frames/s
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=[*SUITES, "all"], help="which suite to run")
    add_config_arguments(parser)
    parser.add_argument(
        "--quick", action="store_true", help="a reduced size that finishes in a few minutes"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="continual: strategies trained at once, each in its own process",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="continual: paired streams (simulation and run seed together), every strategy on each",
    )
    parser.add_argument(
        "--strategies",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=None,
        metavar="A,B,...",
        help="continual: the strategies to run (default: all of them)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continual: continue each strategy from its checkpoints under --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="directory for JSON, markdown and plots",
    )


def machine_description() -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.seeds < 1:
        raise ConfigError("ptycl bench", "--seeds", f"{args.seeds}: run at least 1 stream")
    if args.jobs < 1:
        raise ConfigError(
            "ptycl bench", "--jobs", f"{args.jobs}: train at least 1 strategy at a time"
        )
    setup_logging(config.run.log_level)
    args.out.mkdir(parents=True, exist_ok=True)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    written = []
    for suite in progress(suites, "bench", unit="suites"):
        module = importlib.import_module(SUITES[suite])
        log.info("bench %s%s", suite, " (quick)" if args.quick else "")
        # Only the continual suite trains runs long enough to share out and to resume.
        options = (
            {
                "jobs": args.jobs,
                "resume": args.resume,
                "seeds": args.seeds,
                "strategies": args.strategies,
                "command": shlex.join(["ptycl", *sys.argv[1:]]),
            }
            if suite == "continual"
            else {}
        )
        result = module.run(config=config, out_dir=args.out, quick=args.quick, **options)
        result["machine"] = machine_description()
        # One writer for every suite's JSON, all or nothing (a killed bench leaves no torn file).
        path = write_text(args.out / f"{suite}.json", json.dumps(result, indent=2, default=str))
        log.info("bench %s: wrote %s", suite, path)
        written += [path, *map(Path, result.get("plots", []))]
    shown = ", ".join(str(p.relative_to(args.out)) for p in written if p.is_relative_to(args.out))
    log.info("outputs in %s: %s", args.out, shown)
    return 0
