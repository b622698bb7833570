"""Variants of one run configuration: the suites change a few settings and keep the rest."""

from __future__ import annotations

from typing import Any

from ptycl.config import Config


def with_settings(config: Config, **sections: dict[str, Any]) -> Config:
    """``config`` with some settings of some sections replaced, e.g.
    ``with_settings(config, train={"strategy": "er"})``."""
    return config.model_copy(
        update={
            name: getattr(config, name).model_copy(update=values)
            for name, values in sections.items()
        }
    )
