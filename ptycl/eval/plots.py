"""PNG figures of continual-learning results and reconstructions (matplotlib).

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot: no global
figure registry to leak, no GUI backend to pick, safe from worker threads. PNGs render with
Agg. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from ptycl.eval.image_metrics import on_same_grid, wrapped_phase_difference
from ptycl.io.records import ObjectImage
from ptycl.io.scan_plot import image_extent_um
from ptycl.outputs import replacing

ANNOTATE_UP_TO = 20  # annotate error-matrix cells with their values up to this many scans
# An error matrix of a long watch run has thousands of scans: its figure stops growing at this
# side (inches: 0.55 inch per scan up to 10 scans), so drawing it costs the same time and memory
# after ten scans or ten thousand, and axes label at most this many ticks.
MATRIX_SIDE_MAX_IN = 8.0
TICK_LABELS_MAX = 20
LINE_STYLES = ("-", "--", ":", "-.")
UNCOVERED_COLOUR = "#d9d9d9"  # not-yet-seen matrix cells and unstitched image pixels
# What each error matrix holds, with its unit, for axes and colour bars. Amplitude is the
# object's transmission |O| (1: transparent), so its errors have no unit.
METRIC_LABELS = {
    "amplitude_mae": "amplitude MAE (|O|, 1 = transparent)",
    "phase_mae": "phase MAE (rad)",
    "phase_offset_free_mae": "offset-free phase MAE (rad)",
    "amplitude_skill": "amplitude skill (1 - MAE / constant patch's)",
    "phase_skill": "offset-free phase skill (1 - MAE / constant patch's)",
    "amplitude_psnr": "amplitude PSNR (dB)",
    "phase_psnr": "phase PSNR (dB)",
    "amplitude_ssim": "amplitude SSIM (1 = identical)",
    "phase_ssim": "phase SSIM (1 = identical)",
}


def plot_error_matrix(
    error_matrix: np.ndarray,
    scan_ids: Sequence[str],
    path: str | Path,
    title: str = "Error on each scan after each training step",
    metric: str = "error",
) -> Path:
    """Heatmap of R[i, j] (row: trained through scan i, column: evaluated on scan j), each cell
    annotated with its value up to ANNOTATE_UP_TO scans; cells never evaluated (NaN: not seen
    yet, or left out of that row's evaluation) are grey. The figure's size is capped, so a
    matrix of thousands of scans costs what one of a few dozen does."""
    R = np.asarray(error_matrix, dtype=np.float64)
    T = len(scan_ids)
    if R.shape != (T, T):
        raise ValueError(f"error matrix of shape {R.shape} for {T} scan ids")
    side = min(2.5 + 0.55 * T, MATRIX_SIDE_MAX_IN)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad=UNCOVERED_COLOUR)
    shown = ax.imshow(np.ma.masked_invalid(R), cmap=cmap)
    fig.colorbar(shown, ax=ax, label=metric)
    ticks = _tick_positions(T)
    ax.set_xticks(ticks, [scan_ids[t] for t in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, [scan_ids[t] for t in ticks])
    ax.set_xlabel("evaluated on scan")
    ax.set_ylabel("after training through scan")
    ax.set_title(title)
    if T <= ANNOTATE_UP_TO:
        finite = R[np.isfinite(R)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i, j in np.argwhere(np.isfinite(R)):
            # dark text on viridis' bright (high) end, light text on its dark end
            colour = "black" if R[i, j] > middle else "white"
            ax.text(j, i, f"{R[i, j]:.3g}", ha="center", va="center", color=colour, fontsize=8)
    return save_figure(fig, path)


def plot_error_over_time(
    error_matrices: np.ndarray | Mapping[str, np.ndarray],
    scan_ids: Sequence[str],
    path: str | Path,
    first_k: int = 3,
    title: str = "Error on the first scans as training goes on",
    metric: str = "error",
    constants: Mapping[str, float] | None = None,
) -> Path:
    """One panel per scan of the first ``first_k``: its error after each training step, from
    the step that learned it on, one line per strategy when given {strategy: R} (each its own
    colour and style, so five strategies stay apart). Steps that did not evaluate the scan
    (NaN) are skipped, the line joining the ones that did. ``constants`` (scan id -> the
    error of the scan's constant patch) draws that baseline beside the model's error, a grey
    dashed line: above it the model knows the scan, at it the model predicts a median."""
    strategies = (
        dict(error_matrices) if isinstance(error_matrices, Mapping) else {"": error_matrices}
    )
    T = len(scan_ids)
    shown = min(first_k, T)
    fig = Figure(figsize=(3.2 * shown + 1.6, 4.2), layout="constrained")
    axes = fig.subplots(1, shown, sharey=True, squeeze=False)[0]
    colours = colormaps["tab10"]
    ticks = _tick_positions(T)
    for s, (strategy, matrix) in enumerate(strategies.items()):
        R = np.asarray(matrix, dtype=np.float64)
        if R.shape != (T, T):
            raise ValueError(
                f"error matrix of {strategy or 'the run'} has shape {R.shape} for {T} scans"
            )
        for j, ax in enumerate(axes):
            steps = np.arange(j, T)
            evaluated = np.isfinite(R[j:, j])
            ax.plot(
                steps[evaluated],
                R[j:, j][evaluated],
                marker="o",
                markersize=3,
                label=strategy or None,
                color=colours(s % colours.N),
                linestyle=LINE_STYLES[s % len(LINE_STYLES)],
            )
    for j, ax in enumerate(axes):
        if constants is not None and scan_ids[j] in constants:
            ax.axhline(constants[scan_ids[j]], color="0.4", linestyle="--", label="constant patch")
        ax.set_title(scan_ids[j], fontsize=9)
        ax.set_xticks(ticks, [scan_ids[t] for t in ticks], rotation=45, ha="right", fontsize=7)
        ax.set_xlim(-0.3, T - 0.7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    fig.supxlabel("after training through scan", fontsize=9)
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(labels):
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return save_figure(fig, path)


def plot_reconstruction(
    predicted: ObjectImage,
    truth: ObjectImage | None,
    covered: np.ndarray | None,
    path: str | Path,
    title: str = "Reconstruction",
) -> Path:
    """Amplitude (top) and phase (bottom) of the prediction; with a truth on the same grid,
    the truth beside it and the absolute error (phase: wrapped) with its mean over the covered
    area. Uncovered pixels are grey. Axes in micrometres in the scan frame."""
    if truth is not None and not on_same_grid(predicted, truth):
        raise ValueError(
            "truth and prediction lie on different grids: stitch onto the truth's grid"
        )
    covered = (
        np.ones(predicted.values.shape, bool) if covered is None else np.asarray(covered, bool)
    )
    if covered.shape != predicted.values.shape:
        raise ValueError(
            f"covered mask of shape {covered.shape} for an image of shape {predicted.values.shape}"
        )
    hidden = ~covered

    columns = 1 if truth is None else 3
    fig = Figure(figsize=(4.2 * columns, 7.5), layout="constrained")
    axes = fig.subplots(2, columns, squeeze=False)
    extent = image_extent_um(predicted)
    # Prediction and truth share colour limits, set by the truth where there is one: fixed
    # limits (0-1, -pi-pi) showed a sample's weak phase contrast as one flat colour.
    reference = truth if truth is not None else predicted
    amplitude_range = _shown_range(reference.amplitude[covered])
    phase_range = _shown_range(reference.phase[covered])
    gray = colormaps["gray"].with_extremes(bad=UNCOVERED_COLOUR)
    # A cyclic map only when the phase fills the circle; on a narrower range its two ends
    # would share a colour.
    wraps = phase_range[1] - phase_range[0] > 1.8 * np.pi
    phase_map = colormaps["twilight" if wraps else "viridis"].with_extremes(bad=UNCOVERED_COLOUR)
    magma = colormaps["magma"].with_extremes(bad=UNCOVERED_COLOUR)

    def show(
        ax: Axes, image: np.ndarray, cmap: Colormap, vmin: float, vmax: float, label: str
    ) -> None:
        shown = ax.imshow(
            np.ma.masked_array(image, hidden), cmap=cmap, vmin=vmin, vmax=vmax, extent=extent
        )
        fig.colorbar(shown, ax=ax, shrink=0.8, label=label)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")

    show(axes[0, 0], predicted.amplitude, gray, *amplitude_range, "amplitude")
    show(axes[1, 0], predicted.phase, phase_map, *phase_range, "phase (rad)")
    axes[0, 0].set_title("predicted amplitude")
    axes[1, 0].set_title("predicted phase")
    if truth is not None:
        show(axes[0, 1], truth.amplitude, gray, *amplitude_range, "amplitude")
        show(axes[1, 1], truth.phase, phase_map, *phase_range, "phase (rad)")
        axes[0, 1].set_title("true amplitude")
        axes[1, 1].set_title("true phase")
        amplitude_error = np.abs(predicted.amplitude - truth.amplitude)
        phase_error = np.abs(wrapped_phase_difference(predicted.phase, truth.phase))
        for row, (error, name) in enumerate(
            ((amplitude_error, "amplitude"), (phase_error, "phase"))
        ):
            top = float(error[covered].max(initial=0.0)) or 1.0
            show(axes[row, 2], error, magma, 0.0, top, f"|{name} error|")
            axes[row, 2].set_title(f"|{name} error|, mean {error[covered].mean():.3g}")
    fig.suptitle(title)
    return save_figure(fig, path)


def _shown_range(values: np.ndarray) -> tuple[float, float]:
    """Colour limits: the 0.5-99.5 percentiles, so a few outlying pixels do not flatten the
    rest; widened to 1e-3 around a constant image."""
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high - low < 1e-3:
        middle = (low + high) / 2
        low, high = middle - 5e-4, middle + 5e-4
    return low, high


def plot_cost_per_scan(
    costs: Mapping[str, Sequence[float]],
    path: str | Path,
    scan_ids: Sequence[str] | None = None,
    ylabel: str = "samples per scan (new + replayed)",
    title: str = "Cost of keeping the model current",
) -> Path:
    """One line per strategy of its cost for each scan in the sequence: the samples through
    the model (what strategies differ in, whatever else runs on the machine), or the
    seconds, given with their ``ylabel``."""
    if not costs:
        raise ValueError("plot_cost_per_scan needs at least one strategy")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for s, (strategy, per_scan) in enumerate(costs.items()):
        ax.plot(
            range(len(per_scan)),
            per_scan,
            marker="o",
            markersize=4,
            label=strategy,
            linestyle=LINE_STYLES[s % len(LINE_STYLES)],
        )
    if scan_ids is not None:
        ax.set_xticks(
            range(len(scan_ids)), scan_ids, rotation=45, ha="right", rotation_mode="anchor"
        )
    highest = max((max(per_scan, default=0) for per_scan in costs.values()), default=0)
    ax.set_ylim(0, 1.1 * highest or 1.0)  # from 0, with room above the highest point
    return _finish(fig, ax, "scan", ylabel, title, path)


def plot_error_against_cost(
    points: Mapping[str, tuple[float, Mapping[str, float | None]]],
    constant_error: float,
    path: str | Path,
    xlabel: str = "total training cost (forward samples)",
    ylabel: str = "final offset-free phase MAE (rad)",
    title: str = "Final error against total cost, one point per strategy",
) -> Path:
    """One point per strategy: {strategy: (cost, interval)} with the interval a dict of
    ``mean``, ``low``, ``high`` (bars where known); the constant patch's error a grey
    dashed line (a point on it has learned nothing)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = colormaps["tab10"]
    for s, (strategy, (cost, interval)) in enumerate(points.items()):
        mean, low, high = interval["mean"], interval.get("low"), interval.get("high")
        bars = None if low is None or high is None else [[mean - low], [high - mean]]
        colour = colours(s % colours.N)
        ax.errorbar(cost, mean, yerr=bars, fmt="o", capsize=3, color=colour, label=strategy)
        ax.annotate(strategy, (cost, mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(constant_error, color="0.4", linestyle="--", label="constant patch")
    ax.set_xscale("log")
    return _finish(fig, ax, xlabel, ylabel, title, path)


def _finish(fig: Figure, ax: Axes, xlabel: str, ylabel: str, title: str, path: str | Path) -> Path:
    """Labels, a y axis from 0, a grid and a legend; then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_costs(
    costs: Mapping[str, Sequence[Mapping[str, float]]],
    directory: Path,
    scan_ids: Sequence[str],
) -> list[Path]:
    """``cost_per_scan.png`` (samples through the model: what the strategies differ in) and
    ``time_per_scan.png`` (seconds, which follow the machine's load as much as the work), one
    line per strategy of its per-scan costs (``ScanCost`` as dicts)."""
    return [
        plot_cost_per_scan(
            {s: [c["samples"] for c in per_scan] for s, per_scan in costs.items()},
            directory / "cost_per_scan.png",
            scan_ids=scan_ids,
        ),
        plot_cost_per_scan(
            {s: [c["seconds"] for c in per_scan] for s, per_scan in costs.items()},
            directory / "time_per_scan.png",
            scan_ids=scan_ids,
            ylabel="training time per scan (s)",
            title="Wall-clock time per scan (varies with the machine's load)",
        ),
    ]


def _tick_positions(n: int) -> list[int]:
    """Every position up to TICK_LABELS_MAX, else evenly spaced ones with the first and last."""
    if n <= TICK_LABELS_MAX:
        return list(range(n))
    return sorted({round(k * (n - 1) / (TICK_LABELS_MAX - 1)) for k in range(TICK_LABELS_MAX)})


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with replacing(path) as temporary:  # a plot is replaced whole or not at all
        fig.savefig(temporary, dpi=100)
    return path
