"""The scan path drawn over the label's amplitude: the quickest way to see a sign or axis error
(``ptycl info --plot``). A path that runs off the object, or over a blank part of it, is wrong.

Built on ``matplotlib.figure.Figure`` directly (no pyplot, no GUI backend), rendered with Agg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ptycl.io.records import ObjectImage
from ptycl.outputs import replacing


def image_extent_um(image: ObjectImage) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in µm of an image drawn top-down like the
    array: pixel (r, c) is centred at ``center_m + ((r, c) - (H // 2, W // 2)) * pixel_m``."""
    height, width = image.values.shape
    (py, px), (cy, cx) = image.pixel_m, image.center_m
    left, right = cx + (-(width // 2) - 0.5) * px, cx + (width - width // 2 - 0.5) * px
    top, bottom = cy + (-(height // 2) - 0.5) * py, cy + (height - height // 2 - 0.5) * py
    return left * 1e6, right * 1e6, bottom * 1e6, top * 1e6


def plot_scan_path(
    positions_m: np.ndarray, label: ObjectImage | None, path: Path, title: str
) -> Path:
    """The probe positions, in order, over the label's amplitude when there is one."""
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.add_subplot()
    if label is not None:
        shown = ax.imshow(label.amplitude, cmap="gray", extent=image_extent_um(label))
        fig.colorbar(shown, ax=ax, label="label amplitude", shrink=0.8)
    y_um, x_um = positions_m[:, 0] * 1e6, positions_m[:, 1] * 1e6
    ax.plot(x_um, y_um, "-", color="tab:orange", linewidth=0.6, alpha=0.8)
    ax.scatter(x_um, y_um, s=6, c=np.arange(len(x_um)), cmap="autumn", zorder=3)
    ax.plot(x_um[:1], y_um[:1], "o", markersize=8, markerfacecolor="none", color="tab:cyan")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm), rows downwards")
    ax.set_aspect("equal")
    if label is None:
        ax.invert_yaxis()  # as an image would be drawn
    ax.set_title(title, fontsize=9)
    with replacing(path) as temporary:
        fig.savefig(temporary, dpi=100)
    return path
