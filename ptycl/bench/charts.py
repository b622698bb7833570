"""PNG bar charts of benchmark figures, one or more panels per figure.

Built on ``matplotlib.figure.Figure`` (no pyplot), as ``ptycl.eval.plots``: no global figure
registry, no GUI backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ptycl.eval.plots import save_figure


@dataclass(frozen=True)
class BarPanel:
    """Bars of one or more series over categories: side by side, or stacked (parts of a
    whole, e.g. the parts of a training step)."""

    title: str
    ylabel: str
    categories: Sequence[str]
    series: dict[str, Sequence[float]]  # one value per category
    stacked: bool = False
    log: bool = False  # for rates that differ by orders of magnitude
    reference: float | None = None  # a dashed horizontal line (a target, perfect efficiency)


def bar_chart(path: Path, panels: Sequence[BarPanel], title: str) -> Path:
    """Write the panels side by side into one PNG and return its path."""
    fig = Figure(figsize=(5.5 * len(panels), 4.5), layout="constrained")
    fig.suptitle(title)
    for panel, ax in zip(panels, fig.subplots(1, len(panels), squeeze=False)[0], strict=True):
        x = np.arange(len(panel.categories))
        names = list(panel.series)
        width = 0.8 if panel.stacked else 0.8 / len(names)
        bottom = np.zeros(len(x))
        for k, name in enumerate(names):
            values = np.asarray(panel.series[name], dtype=float)
            if panel.stacked:
                ax.bar(x, values, width, bottom=bottom, label=name)
                bottom += values
            else:
                ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        if panel.reference is not None:
            ax.axhline(panel.reference, color="black", linestyle="--", linewidth=1)
        if panel.log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        crowded = len(x) > 3  # long labels side by side would overlap: slant them
        ax.set_xticks(
            x, panel.categories, rotation=30 if crowded else 0, ha="right" if crowded else "center"
        )
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=8)
    return save_figure(fig, path)
