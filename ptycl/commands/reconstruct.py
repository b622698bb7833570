"""Reconstruct scans with a trained model: batched inference, stitching, CXI file + PNG.

    ptycl reconstruct SCAN [SCAN ...] --run runs/continual-64 [--out DIR] [--format zarr]

The model and its preparation settings come from the run directory (its ``config.yaml`` and
latest checkpoint). Each scan gives ``<scan id>.recon.h5`` (or ``.recon.zarr``) and a PNG of
amplitude and phase, beside the truth and with its errors when the scan carries a label.
A bad scan is reported in one line and the others go on.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ptycl.commands.options import add_override_argument
from ptycl.config import load_config
from ptycl.errors import ScanError
from ptycl.eval.image_metrics import object_errors
from ptycl.eval.plots import plot_reconstruction
from ptycl.io.source import expand_scan_paths
from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.logs import progress, setup_logging
from ptycl.model.ptychonn import build_model
from ptycl.recon.infer import infer_scan
from ptycl.recon.output import write_reconstruction
from ptycl.train.trainer import resolve_device

log = logging.getLogger("ptycl.recon")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scans",
        nargs="+",
        type=Path,
        help="scan files (HDF5/CXI), Zarr groups or directories of scans",
    )
    parser.add_argument(
        "--run",
        type=Path,
        required=True,
        help="training run directory (config.yaml + checkpoints/)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: RUN/reconstructions)"
    )
    parser.add_argument(
        "--format", choices=["hdf5", "zarr"], default="hdf5", help="reconstruction file format"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="frames per inference batch")
    add_override_argument(parser, "of the run's config, e.g. --set train.device=cpu")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.run / "config.yaml", args.overrides)
    setup_logging(config.run.log_level)
    device = resolve_device(config.train.device)
    model = build_model(config.model, config.prep.input_size).to(device)
    trained = load_checkpoint(args.run / "checkpoints")["trainer"]
    model.load_state_dict(trained["model"])
    support = None if trained["support"] is None else trained["support"].numpy()
    out_dir = args.out or args.run / "reconstructions"
    out_dir.mkdir(parents=True, exist_ok=True)
    scans = expand_scan_paths(args.scans)
    failed = 0
    for path in progress(scans, desc="reconstruct"):
        try:
            prediction = infer_scan(model, path, config.prep, device, args.batch_size, support)
        except ScanError as exc:
            log.error("%s", exc)
            failed += 1
            continue
        scan_id = prediction.metadata.scan_id
        suffix = ".recon.h5" if args.format == "hdf5" else ".recon.zarr"
        stitched = prediction.stitch()
        written = write_reconstruction(
            out_dir / f"{scan_id}{suffix}", prediction, stitched, args.format, source=str(args.run)
        )
        message = ""
        if prediction.truth is not None:
            stitched = prediction.stitch(canvas=prediction.truth)  # compare pixel by pixel
            errors = object_errors(stitched.image, prediction.truth, stitched.covered)
            message = f", phase MAE {errors.phase_mae:.3f} rad, amplitude PSNR {errors.amplitude_psnr:.1f} dB"
        plot_reconstruction(
            stitched.image,
            prediction.truth,
            stitched.covered,
            out_dir / f"{scan_id}.png",
            title=scan_id,
        )
        log.info("%s: %d frames -> %s%s", scan_id, len(prediction.positions_m), written, message)
    log.info("reconstructed %d of %d scans into %s", len(scans) - failed, len(scans), out_dir)
    return 1 if failed else 0
