"""Summarise scans: one line each, or the problem that makes one unusable.

    ptycl info data/sim                 # every scan in a directory
    ptycl info scan0000_manhattan.h5 other.cxi run.zarr
    ptycl info SCAN --json              # one JSON object per scan (per line)
    ptycl info SCAN --plot DIR          # DIR/<stem>.path.png: the scan path over the label
    ptycl info SCAN --positions probe   # what the file's translations mean, if not its writer's

Each scan is opened and all its committed frames are read (so a torn chunk or bad counts
show up here, not in the middle of training). The positions line says which convention was
used to read the translations and why (``ptycl.io.positions``), and the extent they span.
A bad scan prints its error and the others go on; the exit status is 1 if any scan was bad, 2 if
the paths hold no scan at all.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycl.errors import ScanError, printable
from ptycl.io.object_image import label_path_for
from ptycl.io.positions import CONVENTION_SETTINGS, ConventionSetting, positions_extent_m
from ptycl.io.records import EV_J, ObjectImage
from ptycl.io.source import ScanSource, open_scan, require_scans

READ_BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="scan files, Zarr groups or directories of scans",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per scan instead of a line"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="draw each scan's path over its label's amplitude into DIR/<stem>.path.png",
    )
    parser.add_argument(
        "--positions",
        choices=CONVENTION_SETTINGS,
        default="auto",
        help="what the files' translations mean (default: what each file's writer says)",
    )


@dataclass(frozen=True)
class ScanSummary:
    """What ``ptycl info`` reports of one scan."""

    source: ScanSource
    committed_frames: int
    complete: bool
    counts_per_frame: float
    positions_m: np.ndarray  # (N, 2) (y, x)
    label: ObjectImage | None
    label_where: str  # "in file", "in <stem>.label.h5", or ""


def summarise(source: ScanSource) -> ScanSummary:
    state = source.progress()
    counts, positions = 0.0, []
    for batch in source.batches(READ_BATCH):
        counts += float(batch.frames.sum(dtype=np.float64))
        positions.append(batch.positions_m)
    where, label = "in file", source.label_in_file()
    if label is None:
        where, label = f"in {label_path_for(source.path).name}", source.label()
    return ScanSummary(
        source=source,
        committed_frames=state.committed_frames,
        complete=state.complete,
        counts_per_frame=counts / max(state.committed_frames, 1),
        positions_m=np.concatenate(positions) if positions else np.empty((0, 2)),
        label=label,
        label_where=where if label is not None else "",
    )


def _positions_text(summary: ScanSummary) -> str:
    text = f"positions: {summary.source.position_convention.describe()}"
    if len(summary.positions_m):
        (y0, y1), (x0, x1) = positions_extent_m(summary.positions_m)
        text += f"; y {y0 * 1e6:.4g}..{y1 * 1e6:.4g} um, x {x0 * 1e6:.4g}..{x1 * 1e6:.4g} um"
    return text


def summary_line(summary: ScanSummary) -> str:
    source = summary.source
    meta, g = source.metadata, source.metadata.geometry
    (det_y, det_x), (obj_y, obj_x) = g.detector_pixel_m, g.object_pixel_m
    masked = 0 if meta.mask is None else int(meta.mask.sum())
    label = summary.label
    label_text = "no label"
    if label is not None:
        h, w = label.values.shape
        label_text = f"label {summary.label_where} {h}x{w} px of {label.pixel_m[0] * 1e9:.3g} nm"
    parts = [
        f"{source.path}: {summary.committed_frames} frames {g.frame_shape[0]}x{g.frame_shape[1]} "
        f"{source.frame_dtype}, {'complete' if summary.complete else 'being written'}",
        f"{g.energy_j / EV_J / 1e3:.3g} keV, z {g.distance_m:.3g} m, "
        f"detector px {det_y * 1e6:.3g}x{det_x * 1e6:.3g} um, "
        f"object px {obj_y * 1e9:.3g}x{obj_x * 1e9:.3g} nm",
        f"family {meta.sample_family or '-'}, {masked} masked px",
        f"{summary.counts_per_frame:.3g} counts/frame",
        label_text,
        _positions_text(summary),
    ]
    return " | ".join(parts)


def summary_json(summary: ScanSummary) -> dict[str, Any]:
    """Everything in metres, joules and (y, x) order; the label's centre is the position of
    its pixel (H // 2, W // 2)."""
    source = summary.source
    g = source.metadata.geometry
    label = summary.label
    convention = source.position_convention
    return {
        "path": str(source.path),
        "scan_id": source.metadata.scan_id,
        "frames": summary.committed_frames,
        "complete": summary.complete,
        "frame_shape": list(g.frame_shape),
        "dtype": str(source.frame_dtype),
        "energy_j": g.energy_j,
        "energy_ev": g.energy_j / EV_J,
        "distance_m": g.distance_m,
        "detector_pixel_m": list(g.detector_pixel_m),
        "object_pixel_m": list(g.object_pixel_m),
        "counts_per_frame": summary.counts_per_frame,
        "position_convention": convention.kind,
        "position_convention_reason": convention.reason,
        "positions_m": summary.positions_m.tolist(),
        "label": None
        if label is None
        else {
            "where": summary.label_where,
            "shape": list(label.values.shape),
            "pixel_m": list(label.pixel_m),
            "center_m": list(label.center_m),
            "probe_shape": None if label.probe is None else list(label.probe.shape),
        },
    }


def report(path: Path, args: argparse.Namespace) -> str:
    positions: ConventionSetting = args.positions
    with open_scan(path, positions=positions) as source:
        summary = summarise(source)
    if args.plot is not None:
        from ptycl.io.scan_plot import plot_scan_path  # matplotlib only when asked

        args.plot.mkdir(parents=True, exist_ok=True)
        plot_scan_path(
            summary.positions_m,
            summary.label,
            args.plot / f"{path.name.removesuffix(path.suffix)}.path.png",
            textwrap.fill(f"{path.name}: {summary.source.position_convention.describe()}", 90),
        )
    if args.json:
        return json.dumps(summary_json(summary))
    # Escaped: a newline in a name (or an attribute) must not split or forge a line.
    return printable(summary_line(summary))


def main(args: argparse.Namespace) -> int:
    bad = 0
    for path in require_scans(args.paths):
        try:
            print(report(path, args), flush=True)
        except ScanError as exc:
            text = json.dumps({"path": exc.path, "error": exc.problem}) if args.json else f"{exc}"
            print(text, flush=True)
            bad += 1
    return 1 if bad else 0
