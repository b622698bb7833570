"""Scans in and out, whatever the format: ``open_scan``, ``write_scan``, ``open_streaming_writer``.

A scan is HDF5 in the CXI layout or a Zarr v3 group with the same tree; the path says which
backend (``hdf5_scan``, ``zarr_scan``) reads or writes it, against the contracts of
``ptycl.io.base``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from ptycl.errors import ScanError
from ptycl.io.base import ScanSource, StreamingScanWriter
from ptycl.io.hdf5_scan import HDF5ScanSource, HDF5StreamingWriter, write_hdf5_scan
from ptycl.io.object_image import LABEL_SUFFIX, label_path_for, write_object_image
from ptycl.io.records import ObjectImage, ScanMetadata, SimulatedScan
from ptycl.io.zarr_scan import ZarrScanSource, ZarrStreamingWriter, write_zarr_scan

ScanFormat = Literal["hdf5", "zarr"]
LabelPlacement = Literal["in_scan", "separate", "none"]
HDF5_SUFFIXES = (".h5", ".cxi", ".hdf5")
ZARR_SUFFIX = ".zarr"
SUFFIXES: dict[ScanFormat, str] = {"hdf5": ".h5", "zarr": ZARR_SUFFIX}
# ptycl's reconstructions, written beside the scans: <stem>.recon.h5, .recon.zarr, .recon.png
RECON_MARK = ".recon."
NameKind = Literal["scan", "label"]


def scan_format_of(path: str | Path) -> ScanFormat:
    """HDF5 for ``.h5``/``.cxi``/``.hdf5`` files, Zarr for ``.zarr`` or any directory."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "hdf5"
    if path.suffix.lower() == ZARR_SUFFIX or path.is_dir():
        return "zarr"
    raise ScanError(
        path, f"not a scan: expected {', '.join(HDF5_SUFFIXES)} or a {ZARR_SUFFIX} directory"
    )


def name_kind(name: str) -> NameKind | None:
    """What a directory entry's name says it is: a scan, a label (``<stem>.label.h5``), or
    neither: hidden names (writers' temporaries), ptycl's own reconstructions, other files.
    The one rule for the watcher, ``ptycl train``, ``ptycl info`` and ``ptycl reconstruct``."""
    lower = name.lower()
    if lower.startswith(".") or RECON_MARK in lower:
        return None
    if lower.endswith(LABEL_SUFFIX):
        return "label"
    if lower.endswith((ZARR_SUFFIX, *HDF5_SUFFIXES)):
        return "scan"
    return None


def expand_scan_paths(paths: Iterable[Path]) -> list[Path]:
    """Scans in the order given, where a directory that is not a Zarr group stands for the
    scans in it (``name_kind``), in name order."""
    scans: list[Path] = []
    for path in paths:
        is_group = path.suffix.lower() == ZARR_SUFFIX or (path / "zarr.json").exists()
        if path.is_dir() and not is_group:
            scans += sorted(entry for entry in path.iterdir() if name_kind(entry.name) == "scan")
        else:
            scans.append(path)
    return scans


def bytes_on_disk(path: Path) -> int:
    """A scan file's size, or a Zarr group's files together; 0 for nothing there."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def open_scan(path: str | Path, expected_frame_shape: tuple[int, int] | None = None) -> ScanSource:
    """Open a scan for reading; bad input raises ScanError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ScanError(path, "no such file or directory")
    if scan_format_of(path) == "hdf5":
        return HDF5ScanSource(path, expected_frame_shape)
    return ZarrScanSource(path, expected_frame_shape)


def open_streaming_writer(
    path: str | Path,
    metadata: ScanMetadata,
    frame_dtype: np.dtype | str,
    format: ScanFormat | None = None,
    label: ObjectImage | None = None,
) -> StreamingScanWriter:
    """A writer for a scan that grows frame by frame; ``label`` goes into the file up front."""
    path = Path(path)
    fmt = format or scan_format_of(path)
    writer = HDF5StreamingWriter if fmt == "hdf5" else ZarrStreamingWriter
    return writer(path, metadata, np.dtype(frame_dtype), label)


def write_scan(
    path: str | Path,
    scan: SimulatedScan,
    format: ScanFormat | None = None,
    labels: LabelPlacement = "in_scan",
) -> Path:
    """Write a finished scan (complete on arrival: written aside, then renamed into place).

    ``labels``: the truth object in the scan file, in ``<stem>.label.h5`` beside it (written
    after the scan, as a reconstruction would arrive), or nowhere.
    """
    path = Path(path)
    fmt = format or scan_format_of(path)
    in_file = scan.truth if labels == "in_scan" else None
    write = write_hdf5_scan if fmt == "hdf5" else write_zarr_scan
    write(path, scan.metadata, scan.frames, scan.positions_m, in_file)
    if labels == "separate":
        write_object_image(label_path_for(path), scan.truth)
    return path
