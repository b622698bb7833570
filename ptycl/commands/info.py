"""Summarise scans: one line each, or the problem that makes one unusable.

    ptycl info data/sim                 # every scan in a directory
    ptycl info scan0000_manhattan.h5 other.cxi run.zarr

Each scan is opened and all its committed frames are read (so a torn chunk or bad counts
show up here, not in the middle of training). A bad scan prints its error and the others
go on; the exit status is 1 if any scan was bad.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ptycl.errors import ScanError
from ptycl.io.object_image import label_path_for
from ptycl.io.records import EV_J
from ptycl.io.source import ScanSource, expand_scan_paths, open_scan

READ_BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="scan files, Zarr groups or directories of scans",
    )


def _label_text(source: ScanSource) -> str:
    where, label = "in file", source.label_in_file()
    if label is None:
        where, label = f"in {label_path_for(source.path).name}", source.label()
    if label is None:
        return "no label"
    h, w = label.values.shape
    return f"label {where} {h}x{w} px of {label.pixel_m[0] * 1e9:.3g} nm"


def summary_line(path: Path) -> str:
    with open_scan(path) as source:
        state = source.progress()
        counts = sum(float(b.frames.sum(dtype=np.float64)) for b in source.batches(READ_BATCH))
        meta, g = source.metadata, source.metadata.geometry
        (det_y, det_x), (obj_y, obj_x) = g.detector_pixel_m, g.object_pixel_m
        masked = 0 if meta.mask is None else int(meta.mask.sum())
        parts = [
            f"{path}: {state.committed_frames} frames {g.frame_shape[0]}x{g.frame_shape[1]} "
            f"{source.frame_dtype}, {'complete' if state.complete else 'being written'}",
            f"{g.energy_j / EV_J / 1e3:.3g} keV, z {g.distance_m:.3g} m, "
            f"detector px {det_y * 1e6:.3g}x{det_x * 1e6:.3g} um, "
            f"object px {obj_y * 1e9:.3g}x{obj_x * 1e9:.3g} nm",
            f"family {meta.sample_family or '-'}, {masked} masked px",
            f"{counts / max(state.committed_frames, 1):.3g} counts/frame",
            _label_text(source),
        ]
    return " | ".join(parts)


def main(args: argparse.Namespace) -> int:
    bad = 0
    for path in expand_scan_paths(args.paths):
        try:
            print(summary_line(path), flush=True)
        except ScanError as exc:
            print(f"{exc}", flush=True)
            bad += 1
    return 1 if bad else 0
