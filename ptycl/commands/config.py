"""Print a run's settings after its overrides, as the run itself would read them.

    ptycl config -c configs/continual-64.yaml --set train.steps_per_scan=600
    ptycl config -c configs/continual-64.yaml --get run.output_dir

The whole configuration as YAML (what ``ptycl train`` writes as ``config.yaml``), or with
``--get KEY`` one setting. slurm/job.sh asks for ``run.output_dir`` this way, so that it reads
the config with the same interpreter and loader as the ranks it launches.
"""

from __future__ import annotations

import argparse

import yaml

from ptycl.commands.options import add_config_arguments
from ptycl.config import dump_config, load_config
from ptycl.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--get", metavar="KEY", help="print one setting, e.g. run.output_dir")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.get is None:
        print(dump_config(config), end="")
        return 0
    value = config.model_dump(mode="json")
    for key in args.get.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ConfigError("--get", args.get, "no such setting")
        value = value[key]
    print(
        yaml.safe_dump(value, sort_keys=False).strip() if isinstance(value, dict | list) else value
    )
    return 0
