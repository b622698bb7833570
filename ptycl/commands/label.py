"""Write a scan's label, ``<scan stem>.label.h5`` beside it (or ``--out FILE``).

    ptycl label SCAN --from RECONSTRUCTION [--out FILE] [--positions auto|probe|sample]

``--from`` takes a reconstruction another tool wrote (ptychodus's product HDF5, CXI or NPZ,
ptycl's own), a ptycl label, or a plain complex array (``.npy``, ``.npz``,
``FILE.h5:/dataset``) whose pixel size and centre ``--pixel-size`` and ``--center`` give.
The label layout is described in docs/formats.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptycl.errors import ScanError
from ptycl.io.object_image import label_path_for, write_object_image
from ptycl.io.positions import CONVENTION_SETTINGS
from ptycl.io.source import open_scan
from ptycl.label.from_reconstruction import PlainGeometry, label_from_reconstruction


def _pair(text: str) -> tuple[float, float]:
    """``"Y,X"`` -> (y, x): one argument, so that a negative number is not taken for an option."""
    try:
        y, x = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y,X in metres, got {text!r}") from None
    return y, x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scan", type=Path, help="the scan file or Zarr group to label")
    parser.add_argument(
        "--from",
        dest="reconstruction",
        required=True,
        metavar="RECONSTRUCTION",
        help="reconstruction file (ptychodus product .h5/.cxi/.npz, ptycl), .npy/.npz array, "
        "or FILE.h5:/dataset",
    )
    parser.add_argument("--out", type=Path, default=None, help="label file (default: beside SCAN)")
    parser.add_argument(
        "--positions",
        choices=CONVENTION_SETTINGS,
        default="auto",
        help="what the scan's translations mean (default: what its writer says)",
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


def main(args: argparse.Namespace) -> int:
    pixel = args.pixel_size
    if pixel is not None and len(pixel) not in (1, 2):
        raise ScanError(args.reconstruction, "--pixel-size takes one size or two (Y X)")
    geometry = PlainGeometry(
        pixel_m=None if pixel is None else (pixel[0], pixel[-1]),
        center_m=args.center,
        center_index=args.center_index,
    )
    with open_scan(args.scan, positions=args.positions) as scan:
        result = label_from_reconstruction(scan, args.reconstruction, geometry)
        convention = scan.position_convention
        shadowed = args.out is None and scan.label_in_file() is not None
    out = args.out or label_path_for(args.scan)
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
