"""Batched inference over a scan; the predicted patches are then stitched into the object.

Frames are read and prepared batch by batch; the predicted patches are kept so they can be
stitched on more than one grid (the scan's own, the truth's) without inferring twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptycl.config import PrepSettings
from ptycl.errors import ScanError
from ptycl.io.positions import ConventionSetting, PositionConvention
from ptycl.io.records import ObjectImage, ScanMetadata
from ptycl.model.ptychonn import PtychoNN
from ptycl.prep.patches import label_pixel_m
from ptycl.prep.reader import PreparedScanReader
from ptycl.prep.scan_data import prepare_label
from ptycl.recon.stitch import CanvasGrid, StitchedObject, stitch_patches


@torch.inference_mode()
def predict(
    model: PtychoNN, inputs: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """(n, 2, S, S) amplitude and phase for prepared (n, 1, S, S) inputs, returned on the CPU."""
    was_training = model.training
    model.eval()
    outputs = [
        model(inputs[i : i + batch_size].to(device)).stacked().float().cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty((0, 2, *inputs.shape[2:]))


@dataclass(frozen=True)
class ScanPrediction:
    """The model's patches for every frame of a scan, before stitching."""

    metadata: ScanMetadata
    amplitude: np.ndarray  # (N, S, S)
    phase: np.ndarray  # (N, S, S)
    positions_m: np.ndarray  # (N, 2) (y, x)
    pixel_m: tuple[float, float]  # object pixel of the patches
    # The scan's label, when it has one, as training scores against it: on the patches' grid,
    # its phase referenced to the scanned area (``prepare_label``).
    truth: ObjectImage | None
    support: np.ndarray | None = None  # (S, S) bool: the patch pixels the model learned
    # how the scan's translations were read (ptycl.io.positions)
    position_convention: PositionConvention | None = None

    def stitch(self, canvas: CanvasGrid | ObjectImage | None = None) -> StitchedObject:
        """Stitch on ``canvas`` (e.g. the truth's grid), or on the grid covering the scan;
        only the ``support`` of each patch counts when the model was trained on one."""
        return stitch_patches(
            self.amplitude,
            self.phase,
            self.positions_m,
            self.pixel_m,
            canvas=canvas,
            window="tukey" if self.support is None else self.support,
        )


def infer_scan(
    model: PtychoNN,
    path: Path,
    prep: PrepSettings,
    device: torch.device,
    batch_size: int = 256,
    support: np.ndarray | None = None,
    positions_setting: ConventionSetting = "auto",
) -> ScanPrediction:
    """Infer every frame of a finished scan, reading and preparing batch by batch;
    ``positions_setting``: what its translations mean (``ptycl.io.positions``)."""
    amplitude, phase, positions = [], [], []
    with PreparedScanReader(path, prep, positions=positions_setting) as reader:
        metadata, truth = reader.metadata, reader.source.label()
        convention = reader.source.position_convention
        for prepared, positions_m in reader.batches(batch_size):
            inputs = torch.from_numpy(prepared).unsqueeze(1)
            predicted = predict(model, inputs, device, batch_size).numpy()
            amplitude.append(predicted[:, 0])
            phase.append(predicted[:, 1])
            positions.append(positions_m)
    if not positions:
        raise ScanError(path, "the scan has no frames")
    positions_m = np.concatenate(positions)
    if truth is not None:  # scored on its own probe's disc, as training scored it
        label = prepare_label(truth, metadata, prep, positions_m, path)
        truth, support = label.truth, label.support
    return ScanPrediction(
        metadata,
        np.concatenate(amplitude),
        np.concatenate(phase),
        positions_m,
        label_pixel_m(metadata.geometry, prep.input_size, prep.resize),
        truth,
        support,
        convention,
    )
