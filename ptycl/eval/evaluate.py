"""Evaluate a model on the scans seen so far: the rows of the continual error matrices.

Two views of "how well does the model know scan j":
- held-out frames: per-frame amplitude and phase MAE against the label patches of frames the
  model never trained on (this fills R[i, j]);
- the stitched image: every frame of scan j inferred and stitched on the truth's grid, then
  PSNR and SSIM against the truth over the covered area (what a scientist looks at).

So evaluating a scan needs every prepared frame (the stitched image infers them all), their
positions and the truth, but label patches only of the held-out frames: ``EvaluationScan``
keeps that and no more, which is what ``ptycl watch`` holds of each scan it evaluates again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ptycl.eval.image_metrics import object_errors
from ptycl.eval.patch_errors import PatchErrors, constant_patch_errors, patch_errors, skill
from ptycl.io.records import ObjectImage
from ptycl.logs import progress
from ptycl.model.ptychonn import PtychoNN
from ptycl.parallel import Distributed
from ptycl.prep.scan_data import ScanTensors
from ptycl.recon.infer import predict
from ptycl.recon.stitch import StitchedObject, stitch_patches

MATRIX_NAMES = (
    "amplitude_mae",
    "phase_mae",
    "phase_offset_free_mae",
    "amplitude_skill",
    "phase_skill",
    "amplitude_psnr",
    "phase_psnr",
    "amplitude_ssim",
    "phase_ssim",
)


@dataclass(frozen=True)
class EvaluationScan:
    """What ``scan_errors`` needs of a scan, and no more: every prepared frame and its position
    (stitching infers them all), the truth on the label grid, and the label patches of the
    held-out frames only. At ``prep.holdout_fraction`` 0.25 that is half of a ``ScanTensors``
    (which holds two label planes per frame besides the frame); its size is fixed by the
    scan's length, whatever happens later."""

    scan_id: str
    inputs: torch.Tensor  # (N, 1, S, S) float32, every frame
    positions_m: np.ndarray  # (N, 2) (y, x)
    truth: ObjectImage  # the label object, phase-referenced, on the label pixel grid
    holdout_rows: torch.Tensor  # (H,) int64 rows of ``inputs`` never trained on
    holdout_labels: torch.Tensor  # (H, 2, S, S) float32 amplitude, phase of those rows
    support: torch.Tensor  # (S, S) bool: the pixels under this scan's own probe, scored
    # The errors of the held-out frames' constant patch: what the model's errors are judged by.
    constant: PatchErrors | None

    @classmethod
    def of(cls, scan: ScanTensors | EvaluationScan) -> EvaluationScan:
        if isinstance(scan, EvaluationScan):
            return scan
        rows = scan.holdout_rows
        labels = scan.labels[rows]  # indexing copies: the full labels can go
        support = scan.support.cpu()
        return cls(
            scan_id=scan.scan_id,
            inputs=scan.inputs,
            positions_m=scan.positions_m,
            truth=scan.truth,
            holdout_rows=rows,
            holdout_labels=labels,
            support=support,
            constant=constant_patch_errors(labels, support) if len(rows) else None,
        )


def holdout_errors(
    model: PtychoNN, scan: ScanTensors | EvaluationScan, device: torch.device
) -> dict[str, float]:
    """Amplitude MAE, phase MAE (wrapped, radians), offset-free phase MAE and the skills of
    the two against the constant patch, over the scan's held-out frames and its own support
    (the illuminated disc of its probe, the pixels the model learns). NaN without held-out
    frames."""
    scan = EvaluationScan.of(scan)
    if scan.constant is None:
        return {name: math.nan for name in MATRIX_NAMES[:5]}
    predicted = predict(model, scan.inputs[scan.holdout_rows], device)
    errors = patch_errors(predicted, scan.holdout_labels, scan.support)
    return {
        "amplitude_mae": errors.amplitude_mae,
        "phase_mae": errors.phase_mae,
        "phase_offset_free_mae": errors.phase_offset_free_mae,
        "amplitude_skill": skill(errors.amplitude_mae, scan.constant.amplitude_mae),
        "phase_skill": skill(errors.phase_offset_free_mae, scan.constant.phase_offset_free_mae),
    }


def stitch_scan(
    model: PtychoNN, scan: ScanTensors | EvaluationScan, device: torch.device
) -> StitchedObject:
    """Infer every frame of the scan and stitch the support of each patch (the disc of the
    scan's own probe) on the truth's grid."""
    predicted = predict(model, scan.inputs, device).numpy()
    return stitch_patches(
        predicted[:, 0],
        predicted[:, 1],
        scan.positions_m,
        scan.truth.pixel_m,
        canvas=scan.truth,
        window=scan.support.cpu().numpy(),
    )


def scan_errors(
    model: PtychoNN, scan: ScanTensors | EvaluationScan, device: torch.device
) -> dict[str, float]:
    """Every metric of ``MATRIX_NAMES`` on one scan."""
    stitched = stitch_scan(model, scan, device)
    image = object_errors(stitched.image, scan.truth, stitched.covered)
    return {
        **holdout_errors(model, scan, device),
        **{name: float(getattr(image, name)) for name in MATRIX_NAMES[5:]},
    }


@dataclass
class ErrorMatrices:
    """R[i][j] for each metric: the metric on scan j after training through scan i.

    Stored sparse, row by row: row i holds values only for the scans evaluated after scan i,
    ``columns[i]`` (ascending), aligned with ``rows[name][i]``; every other cell is NaN, never
    evaluated (above the diagonal: not seen yet). ``ptycl train`` evaluates every scan seen,
    so its row i is columns 0..i (the full lower triangle); ``ptycl watch`` evaluates the newest
    scan and a bounded sample of earlier ones, so memory grows with the rows, not their square.

    Constructed without ``columns``, each row is read as dense from column 0 (values may be NaN),
    the layout of nested lists such as ``matrix(name).tolist()``.
    """

    scan_ids: list[str] = field(default_factory=list)
    rows: dict[str, list[list[float]]] = field(
        default_factory=lambda: {name: [] for name in MATRIX_NAMES}
    )
    columns: list[list[int]] = field(default_factory=list)
    # scan id -> the errors of its constant patch (``PatchErrors`` as a dict): the baseline
    # that every error on that scan is judged against
    constants: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.columns:
            lengths = [len(row) for row in next(iter(self.rows.values()), [])]
            self.columns = [list(range(n)) for n in lengths]

    def add_row(
        self,
        model: PtychoNN,
        scans: Sequence[ScanTensors | EvaluationScan],
        device: torch.device,
        dist: Distributed | None = None,
        columns: Sequence[int] | None = None,
    ) -> dict[str, list[float]]:
        """Evaluate ``scans`` after training through the newest one: a new row.

        Without ``columns``, ``scans`` are every scan seen so far, in order (they name the
        matrix's columns). With ``columns``, scan k is column ``columns[k]`` (ascending) of the
        scans named by ``scan_ids``, which the caller keeps; every other column of the row is
        never evaluated.

        With ``dist`` (a data-parallel job; collective), each rank evaluates its share of the
        scans and every rank gets, and adds, the whole row. Returns the row's values, in the
        order of ``scans``.
        """
        if columns is None:
            self.scan_ids = [scan.scan_id for scan in scans]
            columns = range(len(scans))
        if len(columns) != len(scans) or list(columns) != sorted(set(columns)):
            raise ValueError(f"columns {list(columns)} for {len(scans)} scans: need ascending")
        indices = range(len(scans))
        mine = indices if dist is None else indices[dist.share(len(scans))]
        scans = [EvaluationScan.of(scan) for scan in scans]
        for scan in scans:
            if scan.constant is not None:
                self.constants[scan.scan_id] = asdict(scan.constant)
        shown = progress(mine, "evaluate", unit="scans", rank=0 if dist is None else dist.rank)
        errors = {i: scan_errors(model, scans[i], device) for i in shown}
        if dist is not None:
            errors = {i: e for part in dist.allgather(errors) for i, e in part.items()}
        row = {name: [errors[i][name] for i in indices] for name in MATRIX_NAMES}
        self.columns.append([int(j) for j in columns])
        for name in MATRIX_NAMES:
            self.rows[name].append(row[name])
        return row

    def latest(self, name: str) -> tuple[list[int], list[float]]:
        """(columns, values) of the newest row of ``name``; empty before the first row."""
        if not self.rows[name]:
            return [], []
        return self.columns[-1], self.rows[name][-1]

    def matrix(self, name: str) -> np.ndarray:
        """The T x T matrix, NaN where never evaluated (above the diagonal: not yet seen)."""
        rows = self.rows[name]
        out = np.full((len(rows), len(rows)), np.nan)
        for i, (columns, values) in enumerate(zip(self.columns, rows, strict=True)):
            out[i, columns] = values
        return out

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> ErrorMatrices:
        return cls(
            scan_ids=list(state["scan_ids"]),
            rows={k: [list(r) for r in v] for k, v in state["rows"].items()},
            columns=[[int(j) for j in c] for c in state["columns"]],
            constants={k: dict(v) for k, v in state.get("constants", {}).items()},
        )
