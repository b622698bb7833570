"""Evaluate a model on the scans seen so far: the rows of the continual error matrices.

Two views of "how well does the model know scan j":
- held-out frames: per-frame amplitude and phase MAE against the label patches of frames the
  model never trained on (this fills R[i, j]);
- the stitched image: every frame of scan j inferred and stitched on the truth's grid, then
  PSNR and SSIM against the truth over the covered area (what a scientist looks at).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ptycl.eval.image_metrics import object_errors
from ptycl.model.ptychonn import PtychoNN
from ptycl.recon.infer import predict
from ptycl.recon.stitch import StitchedObject, stitch_patches
from ptycl.train.distributed import Distributed
from ptycl.train.scan_data import ScanTensors

MATRIX_NAMES = (
    "amplitude_mae",
    "phase_mae",
    "amplitude_psnr",
    "phase_psnr",
    "amplitude_ssim",
    "phase_ssim",
)


def holdout_mae(
    model: PtychoNN, scan: ScanTensors, device: torch.device, support: torch.Tensor
) -> tuple[float, float]:
    """(amplitude MAE, phase MAE in radians, wrapped) over the scan's held-out frames, on the
    (S, S) ``support`` pixels (the illuminated field of view the model learns)."""
    rows = scan.holdout_rows
    predicted = predict(model, scan.inputs[rows], device)
    truth = scan.labels[rows]
    lit = support.cpu()
    amplitude = (predicted[:, 0] - truth[:, 0])[:, lit].abs().mean().item()
    phase_difference = (
        torch.remainder(predicted[:, 1] - truth[:, 1] + math.pi, 2 * math.pi) - math.pi
    )
    return amplitude, phase_difference[:, lit].abs().mean().item()


def stitch_scan(
    model: PtychoNN, scan: ScanTensors, device: torch.device, support: torch.Tensor
) -> StitchedObject:
    """Infer every frame of the scan and stitch the ``support`` of each patch on the truth's
    grid."""
    predicted = predict(model, scan.inputs, device).numpy()
    return stitch_patches(
        predicted[:, 0],
        predicted[:, 1],
        scan.positions_m,
        scan.truth.pixel_m,
        canvas=scan.truth,
        window=support.cpu().numpy(),
    )


def scan_errors(
    model: PtychoNN, scan: ScanTensors, device: torch.device, support: torch.Tensor
) -> dict[str, float]:
    """Every metric of ``MATRIX_NAMES`` on one scan."""
    amplitude_mae, phase_mae = holdout_mae(model, scan, device, support)
    stitched = stitch_scan(model, scan, device, support)
    image = object_errors(stitched.image, scan.truth, stitched.covered)
    return {
        "amplitude_mae": amplitude_mae,
        "phase_mae": phase_mae,
        **{name: float(getattr(image, name)) for name in MATRIX_NAMES[2:]},
    }


@dataclass
class ErrorMatrices:
    """R[i][j] for each metric: the metric on scan j after training through scan i (NaN: unseen)."""

    scan_ids: list[str] = field(default_factory=list)
    rows: dict[str, list[list[float]]] = field(
        default_factory=lambda: {name: [] for name in MATRIX_NAMES}
    )

    def add_row(
        self,
        model: PtychoNN,
        scans: list[ScanTensors],
        device: torch.device,
        support: torch.Tensor,
        dist: Distributed | None = None,
    ) -> dict[str, list[float]]:
        """Evaluate every scan seen so far after training through the newest one.

        With ``dist`` (a data-parallel job; collective), each rank evaluates its share of the
        scans and every rank gets, and adds, the whole row.
        """
        self.scan_ids = [scan.scan_id for scan in scans]
        indices = range(len(scans))
        mine = indices if dist is None else indices[dist.share(len(scans))]
        errors = {i: scan_errors(model, scans[i], device, support) for i in mine}
        if dist is not None:
            errors = {i: e for part in dist.allgather(errors) for i, e in part.items()}
        row = {name: [errors[i][name] for i in indices] for name in MATRIX_NAMES}
        for name in MATRIX_NAMES:
            self.rows[name].append(row[name])
        return row

    def matrix(self, name: str) -> np.ndarray:
        """The T x T matrix, NaN above the diagonal (scans not yet seen)."""
        rows = self.rows[name]
        out = np.full((len(rows), len(rows)), np.nan)
        for i, values in enumerate(rows):
            out[i, : len(values)] = values
        return out

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> ErrorMatrices:
        return cls(
            scan_ids=list(state["scan_ids"]),
            rows={k: [list(r) for r in v] for k, v in state["rows"].items()},
        )
