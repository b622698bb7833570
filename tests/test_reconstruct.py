"""`ptycl reconstruct` end to end: a trained run's model over its scans, scored as training
scores them, written as CXI HDF5 and PNG."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from ptycl.cli import main
from ptycl.config import load_config
from ptycl.eval.image_metrics import object_errors
from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.model.ptychonn import build_model
from ptycl.recon.infer import infer_scan
from ptycl.simulate.run import simulate_scans
from ptycl.train.run import run_continual
from tests.conftest import TINY


@pytest.mark.parametrize(
    ("frame_size", "resize"),
    [(64, "crop"), (128, "crop"), (128, "bin")],
    ids=["64-as-is", "128-cropped-to-64", "128-binned-to-64"],
)
def test_reconstruct_scores_a_scan_as_the_run_evaluated_it(tmp_path, frame_size, resize):
    """The label is prepared as in training (resampled to the patches' grid, its phase
    referenced to the scanned area): cropping made the label's grid differ from the patches'
    (reconstruct stopped), binning left a constant phase offset in the scores."""
    scans = tmp_path / "scans"
    settings = [
        *TINY,
        "simulate.n_scans=2",
        f"simulate.frame_size={frame_size}",
        f"simulate.out_dir={scans}",
        f"prep.resize={resize}",
        "train.strategy=incremental",
        f"run.output_dir={tmp_path / 'run'}",
        f"scans=[{scans}]",
    ]
    config = load_config(None, settings)
    simulate_scans(config.simulate)
    report = run_continual(config)

    # The run's last row of the image metrics: the final model, every frame stitched.
    trained = load_checkpoint(tmp_path / "run" / "checkpoints")["trainer"]
    model = build_model(config.model, config.prep.input_size)
    model.load_state_dict(trained["model"])
    support = trained["support"].numpy()
    last = report.error_rows[-1]
    for column, path in enumerate(sorted(scans.glob("*.h5"))):
        if path.name.endswith(".label.h5"):
            continue
        prediction = infer_scan(model, path, config.prep, torch.device("cpu"), support=support)
        stitched = prediction.stitch(canvas=prediction.truth)
        errors = object_errors(stitched.image, prediction.truth, stitched.covered)
        for metric in ("amplitude_psnr", "phase_psnr", "amplitude_ssim", "phase_ssim"):
            assert math.isclose(getattr(errors, metric), last[metric][column], rel_tol=1e-5), (
                metric,
                path.name,
            )

    out = tmp_path / "recon"
    run_dir = tmp_path / "run"
    assert main(["reconstruct", str(scans), "--run", str(run_dir), "--out", str(out)]) == 0
    for scan_id in report.scan_ids:
        with h5py.File(out / f"{scan_id}.recon.h5") as written:
            image = written["entry_1/image_1/data"][()]
            assert image.dtype == np.complex64 and image.ndim == 2
            assert np.isfinite(image).all()
            # CXI's description of a real-space image: its (x, y) extent in metres.
            assert written["entry_1/image_1/data_space"][()] == b"real"
            pixel = (
                written["entry_1/image_1/y_pixel_size"][()],
                written["entry_1/image_1/x_pixel_size"][()],
            )
            np.testing.assert_allclose(
                written["entry_1/image_1/image_size"][()],
                [image.shape[1] * pixel[1], image.shape[0] * pixel[0]],
                rtol=1e-12,
            )
        assert (out / f"{scan_id}.png").stat().st_size > 1000
