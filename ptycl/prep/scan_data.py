"""One scan as training tensors: prepared frames, label patches, a held-out split.

The held-out frames of every scan are never trained on; they measure how well the model
still knows the scan after later ones (the continual error matrix). A finished scan holds out
a region of the sample behind a guard band of a probe diameter (``prep.holdout``); a scan
followed while it is written (``ptycl watch``) holds out frames of each segment at random, as
the region is not known before the scan ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptycl.config import PrepSettings
from ptycl.errors import ScanError
from ptycl.io.positions import ConventionSetting
from ptycl.io.records import ObjectImage, ScanMetadata
from ptycl.prep.holdout import spatial_holdout, support_diameter_m
from ptycl.prep.patches import (
    illuminated_support,
    label_patches,
    label_pixel_m,
    reference_phase,
    resample_object,
)
from ptycl.prep.reader import PreparedScanReader

log = logging.getLogger("ptycl.prep")


@dataclass
class ScanTensors:
    """A whole labelled scan, ready for the model."""

    metadata: ScanMetadata
    path: Path
    inputs: torch.Tensor  # (N, 1, S, S) float32 prepared frames
    labels: torch.Tensor  # (N, 2, S, S) float32 amplitude, phase
    positions_m: np.ndarray  # (N, 2) (y, x)
    truth: ObjectImage  # the label object, phase-referenced, on the label pixel grid
    support: torch.Tensor  # (S, S) bool: label pixels under the probe (all, without a probe)
    train_rows: torch.Tensor  # (N_train,) int64
    holdout_rows: torch.Tensor  # (N_holdout,) int64; any other row is in a guard band

    @property
    def scan_id(self) -> str:
        return self.metadata.scan_id

    def __len__(self) -> int:
        return self.inputs.shape[0]


def split_rows(n: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic random split, so a resumed run holds out the same frames."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_holdout = round(n * holdout_fraction)
    return order[n_holdout:].sort().values, order[:n_holdout].sort().values


@dataclass(frozen=True)
class PreparedLabel:
    """A scan's label made ready for cutting patches: on the model's output grid, its phase
    referenced to the scanned area, with the illuminated support the model learns."""

    truth: ObjectImage  # on the label pixel grid, phase-referenced
    support: np.ndarray  # (S, S) bool


def prepare_label(
    truth: ObjectImage,
    metadata: ScanMetadata,
    prep: PrepSettings,
    reference_positions_m: np.ndarray,
    path: Path | str = "",
) -> PreparedLabel:
    """Resample ``truth`` to the model's output grid and reference its phase to the area the
    probe covers at ``reference_positions_m`` (all of a finished scan's positions; a scan
    followed while it is written uses its first frames, so every batch shares one reference)."""
    # Labels live on the model's output grid, which cropping the detector makes coarser.
    pixel_m = label_pixel_m(metadata.geometry, prep.input_size, prep.resize)
    if truth.probe is None:
        support = np.ones((prep.input_size, prep.input_size), dtype=bool)
    else:
        support = illuminated_support(truth.probe, truth.pixel_m, pixel_m, prep.input_size)
    truth = resample_object(truth, pixel_m)
    try:
        truth = reference_phase(truth, reference_positions_m, prep.input_size)
    except ValueError as exc:  # a probe position off the label image
        raise ScanError(path or metadata.scan_id, f"label does not cover the scan: {exc}") from None
    return PreparedLabel(truth=truth, support=support)


def scan_tensors(
    metadata: ScanMetadata,
    path: Path,
    inputs: np.ndarray,
    positions_m: np.ndarray,
    label: PreparedLabel,
    prep: PrepSettings,
    seed: int,
    spatial: bool = False,
) -> ScanTensors:
    """Prepared frames (n, S, S) and their positions (n, 2) with label patches cut from
    ``label``, split into training and held-out rows by ``seed``: a region of the scan behind
    a guard band of the support's diameter when ``spatial``, else frames drawn at random."""
    try:
        amplitude, phase = label_patches(label.truth, positions_m, prep.input_size)
    except ValueError as exc:
        raise ScanError(path, f"label does not cover the scan: {exc}") from None
    if spatial:
        guard_m = support_diameter_m(label.support, label.truth.pixel_m)
        split = spatial_holdout(positions_m, prep.holdout_fraction, guard_m, seed)
        train_rows = torch.from_numpy(split.train_rows)
        holdout_rows = torch.from_numpy(split.holdout_rows)
    else:
        train_rows, holdout_rows = split_rows(len(inputs), prep.holdout_fraction, seed)
    return ScanTensors(
        metadata=metadata,
        path=Path(path),
        inputs=torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).unsqueeze(1),
        labels=torch.from_numpy(np.stack([amplitude, phase], axis=1)),
        positions_m=positions_m,
        truth=label.truth,
        support=torch.from_numpy(label.support),
        train_rows=train_rows,
        holdout_rows=holdout_rows,
    )


def load_scan(
    path: Path,
    prep: PrepSettings,
    seed: int,
    batch_frames: int = 512,
    positions: ConventionSetting = "auto",
) -> ScanTensors:
    """Read a finished scan with its label into memory (a scan at 64² is a few MB);
    ``positions``: what its translations mean (``ptycl.io.positions``)."""
    with PreparedScanReader(path, prep, positions=positions) as reader:
        metadata = reader.metadata
        truth = reader.source.label()
        if truth is None:
            raise ScanError(
                path, "no label (object image) in the scan or beside it; cannot train on it"
            )
        inputs, positions = [], []
        for prepared, positions_m in reader.batches(batch_frames):
            inputs.append(prepared)
            positions.append(positions_m)
        screen = reader.screen
    if not inputs:
        raise ScanError(path, "the scan has no frames")
    if screen.total_skipped:
        if not any(len(i) for i in inputs):
            raise ScanError(path, f"no usable frame: {screen.summary()}")
        log.warning("%s: %s", path, screen.summary())
    inputs_np = np.concatenate(inputs)
    positions_m = np.concatenate(positions)
    label = prepare_label(truth, metadata, prep, positions_m, path)
    tensors = scan_tensors(
        metadata, Path(path), inputs_np, positions_m, label, prep, seed, spatial=True
    )
    if len(tensors.train_rows) == 0:
        raise ScanError(
            path,
            f"all {len(inputs_np)} frame(s) held out for evaluation or in the guard band "
            f"around them (prep.holdout_fraction {prep.holdout_fraction}): none to train on",
        )
    if len(tensors.holdout_rows) == 0:
        log.warning(
            "%s: no frame of %d held out (prep.holdout_fraction %s): its held-out errors stay "
            "NaN (not evaluated); its stitched images are still scored",
            path,
            len(inputs_np),
            prep.holdout_fraction,
        )
    return tensors
