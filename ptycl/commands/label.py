"""Write scans' labels, ``<scan stem>.label.h5`` beside each scan.

    ptycl label SCAN --from RECONSTRUCTION [--out FILE] [--positions auto|probe|sample]
    ptycl label SCAN... [-c CFG] [--probe FILE] [--out-dir DIR]

With ``--from``, the label comes from a reconstruction another tool wrote (ptychodus's product
HDF5, CXI or NPZ, ptycl's own), a ptycl label, or a plain complex array (``.npy``, ``.npz``,
``FILE.h5:/dataset``) whose pixel size and centre ``--pixel-size`` and ``--center`` give
(docs/formats.md). Without it, each scan is reconstructed iteratively with pty-chi (LSQML,
object and probe refined; ``pip install -e '.[iterative]'``) under the budgets of the config's
``label`` section, and written beside the scan (or under ``--out-dir``) with the probe
positions and how it was made (docs/labels-iterative.md). A directory stands for the scans in
it. Exit status 1 when some scan could not be labelled (one line each), 2 when none was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptycl.commands.options import add_config_arguments
from ptycl.config import load_config
from ptycl.errors import ConfigError, ScanError
from ptycl.io.object_image import label_path_for, write_object_image
from ptycl.io.positions import CONVENTION_SETTINGS
from ptycl.io.source import open_scan, require_scans
from ptycl.label.from_reconstruction import PlainGeometry, label_from_reconstruction
from ptycl.logs import setup_logging


def _pair(text: str) -> tuple[float, float]:
    """``"Y,X"`` -> (y, x): one argument, so that a negative number is not taken for an option."""
    try:
        y, x = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X in metres, got {text!r}") from None
    return y, x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scans", nargs="+", type=Path, help="scan files or directories")
    parser.add_argument(
        "--from",
        dest="reconstruction",
        metavar="RECONSTRUCTION",
        help="reconstruction file (ptychodus product .h5/.cxi/.npz, ptycl), .npy/.npz array, "
        "or FILE.h5:/dataset (default: reconstruct iteratively with pty-chi)",
    )
    parser.add_argument("--out", type=Path, default=None, help="with --from: the label file")
    parser.add_argument(
        "--positions",
        choices=CONVENTION_SETTINGS,
        default="auto",
        help="with --from: what the scan's translations mean (default: what its writer says)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        nargs="+",
        metavar="M",
        help="a plain array's pixel size in metres: one, or Y X (default: the scan's)",
    )
    parser.add_argument(
        "--center",
        type=_pair,
        metavar="Y,X",
        help="a plain array's centre in metres (default: the middle of the scan path)",
    )
    parser.add_argument(
        "--center-index",
        choices=["middle", "half"],
        default="middle",
        help="which pixel --center names: (N-1)/2 ('middle', numpy and ptychodus) or N//2",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--probe",
        type=Path,
        help="iterative: the initial probe, a .npy array or a label/reconstruction file with a "
        "probe (default: a disc of the diameter in the scan's metadata or "
        "label.probe_diameter_px)",
    )
    parser.add_argument("--out-dir", type=Path, help="iterative: write the labels here")


def main(args: argparse.Namespace) -> int:
    if args.reconstruction is not None:
        if len(args.scans) != 1:
            raise ConfigError("--from labels one scan: give exactly one SCAN")
        return _from_reconstruction(args, args.scans[0])
    from ptycl.label.label_scans import label_scans  # pty-chi only when it is used

    config = load_config(args.config, args.overrides)
    setup_logging(config.run.log_level)
    paths = require_scans(args.scans)
    failed = label_scans(paths, config.label, args.probe, args.out_dir)
    return 0 if failed == 0 else 2 if failed == len(paths) else 1


def _from_reconstruction(args: argparse.Namespace, scan_path: Path) -> int:
    pixel = args.pixel_size
    if pixel is not None and len(pixel) not in (1, 2):
        raise ScanError(args.reconstruction, "--pixel-size takes one size or two (Y X)")
    geometry = PlainGeometry(
        pixel_m=None if pixel is None else (pixel[0], pixel[-1]),
        center_m=args.center,
        center_index=args.center_index,
    )
    with open_scan(scan_path, positions=args.positions) as scan:
        result = label_from_reconstruction(scan, args.reconstruction, geometry)
        convention = scan.position_convention
        shadowed = args.out is None and scan.label_in_file() is not None
    out = args.out or label_path_for(scan_path)
    write_object_image(out, result.image)
    image = result.image
    height, width = image.values.shape
    probe = "no probe" if image.probe is None else f"probe {'x'.join(map(str, image.probe.shape))}"
    print(
        f"{out}: label {height}x{width} px of {image.pixel_m[0] * 1e9:.4g}x"
        f"{image.pixel_m[1] * 1e9:.4g} nm, centre ({image.center_m[0] * 1e6:.4g}, "
        f"{image.center_m[1] * 1e6:.4g}) um (y, x), {probe}, from {result.source}; scan "
        f"{convention.describe()}"
    )
    for note in result.notes:
        print(f"  {note}")
    if shadowed:
        print("  the scan holds an object image of its own, which ptycl uses before this label")
    return 0
