"""The options the run-file-driven commands share: ``-c/--config`` and ``--set KEY=VALUE``."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every run-file-driven subcommand shares."""
    parser.add_argument(
        "-c", "--config", help="YAML run file (see configs/); defaults apply without one"
    )
    add_override_argument(parser, "e.g. --set train.alpha=0.3")


def add_override_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE``: a dotted-key override of one setting, repeatable."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting by dotted key, {example} (repeatable)",
    )
