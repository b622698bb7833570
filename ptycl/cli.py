"""The ``ptycl`` command: one entry point, a subcommand per job.

Each subcommand reads a YAML run file (``-c/--config``) validated into ``ptycl.config.Config``,
applies ``--set KEY=VALUE`` overrides, and hands the typed settings to the stage that owns
the job. Errors ptycl raises on purpose print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from ptycl import __version__
from ptycl.errors import PtyclError

log = logging.getLogger("ptycl")

# subcommand -> (module, function, one-line help). Modules are imported lazily so that
# `ptycl --help` answers instantly and a command never pays for torch it does not use.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": (
        "ptycl.commands.simulate",
        "main",
        "simulate a beamline: write scans (HDF5/CXI or Zarr), optionally in real time",
    ),
    "info": (
        "ptycl.commands.info",
        "main",
        "read scans back and summarise them (frames, geometry, labels, problems)",
    ),
    "train": (
        "ptycl.commands.train",
        "main",
        "continual training over a sequence of scans, with a strategy of ptycl.train.strategies",
    ),
    "reconstruct": (
        "ptycl.commands.reconstruct",
        "main",
        "infer a scan with a trained model and stitch the object image",
    ),
    "watch": (
        "ptycl.commands.watch",
        "main",
        "watch a beamline directory: follow scans as they are written, train, reconstruct",
    ),
    "bench": (
        "ptycl.commands.bench",
        "main",
        "run benchmark suites, write JSON, markdown and plots",
    ),
    "config": (
        "ptycl.commands.config",
        "main",
        "print a run's settings after its overrides (all, or one with --get KEY)",
    ),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser, with the full options of ``command`` only (the one being run)."""
    parser = argparse.ArgumentParser(
        prog="ptycl",
        description="Continual learning for ptychography: stream scans from HDF5/Zarr, keep a "
        "PtychoNN model current with (Dark) Experience Replay, reconstruct object images.",
        epilog="Run `ptycl COMMAND --help` for a command's options. Every run is described by a "
        "YAML file; `configs/` holds examples.",
    )
    parser.add_argument("--version", action="version", version=f"ptycl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, _, help_text) in COMMANDS.items():
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(
                sub.add_parser(
                    name,
                    help=help_text,
                    description=module.__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                )
            )
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module_name, function, _ = COMMANDS[args.command]
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), function
    )
    try:
        return handler(args)
    except PtyclError as exc:
        # one line, whether or not logging is set up yet
        print(f"ptycl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ptycl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
