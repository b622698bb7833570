"""``ptycl label SCAN...``: an iterative label for each finished scan, one line per failure.

Each scan is read whole, reconstructed by ``ptycl.label.iterative`` under the budgets of the
``label`` section, and written as ``<scan stem>.label.h5`` beside it (or in ``out_dir``), the
file ``ptycl train`` and ``ptycl watch`` look for. A scan that cannot be labelled (unreadable,
unfinished, no initial probe) is reported in one line naming the file; the others go on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ptycl.config import LabelSettings
from ptycl.errors import PtyclError, ScanError
from ptycl.io.object_image import label_path_for, read_object_image
from ptycl.io.source import open_scan
from ptycl.label.iterative import IterativeLabel, reconstruct
from ptycl.label.label_file import write_iterative_label
from ptycl.logs import Progress

log = logging.getLogger("ptycl.label")

READ_BATCH_FRAMES = 512


def read_probe(path: Path) -> np.ndarray:
    """An initial probe: ``.npy`` (a 2-D complex array) or the probe of a label or
    reconstruction file (``/entry_1/image_1/probe``)."""
    if path.suffix == ".npy":
        try:
            probe = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ScanError(path, f"not a readable .npy probe ({exc})") from None
        if probe.ndim != 2 or not np.iscomplexobj(probe):
            raise ScanError(path, f"a probe must be 2-D complex, found {probe.dtype}{probe.shape}")
        return probe
    image = read_object_image(path)
    if image.probe is None:
        raise ScanError(path, "has an object image but no probe (/entry_1/image_1/probe)")
    return image.probe


def label_scan(
    path: Path, settings: LabelSettings, probe: np.ndarray | None = None, out: Path | None = None
) -> tuple[Path, IterativeLabel]:
    """Reconstruct the finished scan at ``path`` and write its label; (label path, label)."""
    with open_scan(path) as source:
        if not source.is_complete():
            raise ScanError(path, "not finished: its writer has not marked it complete")
        batches = list(source.batches(READ_BATCH_FRAMES))
        if not batches:
            raise ScanError(path, "has no frames")
        metadata = source.metadata
        if source.label_in_file() is not None:
            log.warning(
                "%s: carries a label in the file, which readers prefer to a label beside it",
                path,
            )
    frames = np.concatenate([batch.frames for batch in batches])
    positions_m = np.concatenate([batch.positions_m for batch in batches])
    bar = Progress(f"label {path.name}", settings.iterations, unit="epochs")
    try:
        label = reconstruct(
            frames,
            positions_m,
            metadata,
            settings,
            probe=probe,
            on_epoch=lambda _, error: (
                bar.describe(f"label {path.name}, data error {error:.3g}"),
                bar.update(),
            ),
        )
    except ValueError as exc:
        raise ScanError(path, str(exc)) from None
    finally:
        bar.close()
    target = (out / label_path_for(path).name) if out is not None else label_path_for(path)
    return write_iterative_label(target, label), label


def label_scans(
    paths: list[Path], settings: LabelSettings, probe_path: Path | None, out: Path | None
) -> int:
    """Label every scan; the number that failed (each reported in one line)."""
    probe = read_probe(probe_path) if probe_path is not None else None
    failed = 0
    for path in paths:
        try:
            written, label = label_scan(path, settings, probe, out)
        except PtyclError as exc:
            log.error("%s", exc)
            failed += 1
            continue
        log.info(
            "%s: %d epochs (%s) in %.1f s on %s, data error %.4g -> %s",
            path.name,
            label.iterations,
            label.stopped_by,
            label.seconds,
            label.device,
            label.final_data_error,
            written,
        )
    return failed
