"""A scan's label from an existing reconstruction: ``ptycl label SCAN --from RECONSTRUCTION``.

What is read (``read_reconstruction``), in this order:
- a ptychodus product, HDF5 (``object``, ``probe_position_x_m``...) or CXI (object in
  ``image_2``, probe in ``image_1``) or NPZ; ptycl's own reconstructions are CXI products too;
- a ptycl label (``/entry_1/image_1`` with ``x_pixel_size`` and ``center_m``);
- a plain complex array: ``.npy``, an ``.npz`` holding one complex array (or ``object``),
  or an HDF5 dataset named as ``FILE.h5:/path/to/dataset``; its pixel size and centre come
  from the command line (``PlainGeometry``).

Geometry: every centre becomes ptycl's (the position of pixel N // 2). Where the
reconstruction carries its probe positions, they are compared with the scan's as ptycl reads
them: a constant offset between the two frames moves the label's centre; positions that are
the scan's negated or with x and y swapped are refused, naming the convention that fits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from ptycl.errors import ScanError
from ptycl.io import cxi
from ptycl.io import ptychodus_product as products
from ptycl.io.guards import HDF5_ERRORS, MAX_IMAGE_PIXELS, storage_errors
from ptycl.io.object_image import (
    complex_image_array,
    has_object_image,
    read_object_image_from,
)
from ptycl.io.records import ObjectImage, center_from_middle
from ptycl.io.source import ScanSource

CenterIndex = Literal["middle", "half"]  # (N - 1) / 2 (numpy, ptychodus) or N // 2 (ptycl)
# Positions that agree within this many object pixels (rms) after a constant offset are the
# same scan; reconstructions refine positions by a pixel or two.
SAME_POSITIONS_PX = 3.0


@dataclass(frozen=True)
class PlainGeometry:
    """What a bare array cannot say about itself."""

    pixel_m: tuple[float, float] | None = None  # (y, x); None: the scan's object pixel
    center_m: tuple[float, float] | None = None  # (y, x); None: the middle of the scan path
    center_index: CenterIndex = "middle"  # which pixel ``center_m`` names


@dataclass(frozen=True)
class LabelResult:
    """The label made, and what was done to make it (printed for the user)."""

    image: ObjectImage
    source: str  # the layout and file it came from
    notes: tuple[str, ...]


def _plain(
    values: np.ndarray, where: str, geometry: PlainGeometry, scan: ScanSource, positions: np.ndarray
) -> products.Product:
    notes = []
    if values.dtype.kind != "c":
        raise ScanError(where, f"a plain array must be complex, found {values.dtype}{values.shape}")
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ScanError(where, f"a plain array must be 2-D, found {values.dtype}{values.shape}")
    if values.size > MAX_IMAGE_PIXELS:
        raise ScanError(where, f"{values.shape} is larger than ptycl reads")
    pixel_m = geometry.pixel_m
    if pixel_m is None:
        pixel_m = scan.metadata.geometry.object_pixel_m
        notes.append(f"pixel size not given: the scan's object pixel {pixel_m[1] * 1e9:.4g} nm")
    named = geometry.center_m
    if named is None:
        low, high = positions.min(axis=0), positions.max(axis=0)
        named = (float(low[0] + high[0]) / 2, float(low[1] + high[1]) / 2)
        notes.append("centre not given: the middle of the scan path")
        center = center_from_middle(named, values.shape, pixel_m)
    elif geometry.center_index == "middle":
        center = center_from_middle(named, values.shape, pixel_m)
    else:
        center = named
    image = ObjectImage(np.asarray(values, dtype=np.complex64), pixel_m, center)
    return products.Product(image, None, "plain array", tuple(notes))


def _split_dataset(spec: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:/dataset`` (an HDF5 dataset path after the file's name)."""
    path = Path(spec)
    if path.exists() or ":" not in spec:
        return path, None
    file, _, member = spec.rpartition(":")
    return Path(file), member.lstrip("/")


def _from_hdf5(
    path: Path, member: str | None, geometry: PlainGeometry, scan: ScanSource, positions: np.ndarray
) -> products.Product:
    f = cxi.open_hdf5(path)
    with f, storage_errors(path, "reconstruction unreadable", HDF5_ERRORS):
        if member is not None:
            if member not in f or not isinstance(f[member], h5py.Dataset):
                raise ScanError(path, f"no dataset /{member}")
            values = complex_image_array(f, member, "object", path, leading_axes=1)
            return _plain(values, f"{path}:/{member}", geometry, scan, positions)
        if products.is_hdf5_product(f):
            return products.read_hdf5_product(f, path)
        if products.is_cxi_product(f):
            return products.read_cxi_product(f, path)
        if has_object_image(f):
            return products.Product(read_object_image_from(f, path), None, "ptycl label")
        top = ", ".join(sorted(f.keys())[:8]) or "nothing"
        raise ScanError(
            path,
            "cannot be a label: no object image (looked for /object of a ptychodus product, "
            f"/entry_1/image_2/data of a CXI product, /entry_1/image_1/data); found {top} "
            "(name a complex dataset as FILE:/path)",
        )


def _from_npz(
    path: Path, geometry: PlainGeometry, scan: ScanSource, positions: np.ndarray
) -> products.Product:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ScanError(path, f"not a readable NPZ archive ({exc})") from None
    with archive, storage_errors(path, "NPZ archive unreadable", (OSError, ValueError, KeyError)):
        if products.is_npz_product(archive):
            return products.read_npz_product(archive, path)
        complex_keys = [k for k in archive.files if products.npz_header(archive, k)[1].kind == "c"]
        key = products.OBJECT if products.OBJECT in complex_keys else None
        if key is None and len(complex_keys) == 1:
            key = complex_keys[0]
        if key is None:
            raise ScanError(
                path,
                f"cannot be a label: {len(complex_keys)} complex arrays "
                f"({', '.join(complex_keys) or 'none'}), keys {', '.join(archive.files)}; "
                "name the object 'object'",
            )
        values = products.npz_array(archive, key, path)
        return _plain(values, f"{path}[{key}]", geometry, scan, positions)


def read_reconstruction(
    spec: str, geometry: PlainGeometry, scan: ScanSource, positions: np.ndarray
) -> products.Product:
    """The object (and probe and positions, where there are some) of a reconstruction."""
    path, member = _split_dataset(spec)
    if not path.exists():
        raise ScanError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ScanError(path, f"not a readable .npy array ({exc})") from None
        return _plain(values, str(path), geometry, scan, positions)
    if suffix == ".npz":
        return _from_npz(path, geometry, scan, positions)
    return _from_hdf5(path, member, geometry, scan, positions)


def _rms(residual: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))


def align_frames(
    product: products.Product, scan_positions: np.ndarray, scan: ScanSource
) -> tuple[ObjectImage, list[str]]:
    """The product's image in the scan's coordinate frame, checked against the scan's
    positions where the reconstruction has its own."""
    image, notes = product.image, []
    theirs = product.positions_m
    if theirs is None:
        notes.append("the reconstruction has no positions: its frame is taken as the scan's")
        return image, notes
    if len(theirs) != len(scan_positions):
        notes.append(
            f"the reconstruction has {len(theirs)} positions, the scan {len(scan_positions)}: "
            "frames not compared"
        )
        return image, notes
    pixel = float(min(image.pixel_m))
    candidates = {
        "as read": scan_positions,
        "negated": -scan_positions,
        "with x and y swapped": scan_positions[:, ::-1],
    }
    spread = {}
    for name, ours in candidates.items():
        offset = np.median(theirs - ours, axis=0)
        spread[name] = (_rms(theirs - ours - offset) / pixel, offset)
    best = min(spread, key=lambda name: spread[name][0])
    convention = scan.position_convention
    if best != "as read" and spread[best][0] < SAME_POSITIONS_PX < spread["as read"][0]:
        other = "sample" if convention.kind == "probe" else "probe"
        hint = f"; rerun with --positions {other}" if best == "negated" else ""
        raise ScanError(
            scan.path,
            f"the reconstruction's positions match the scan's {best} "
            f"({spread[best][0]:.2g} px rms, against {spread['as read'][0]:.3g} px as read with "
            f"{convention.describe()}){hint}",
        )
    rms_px, offset = spread["as read"]
    if rms_px > SAME_POSITIONS_PX:
        raise ScanError(
            scan.path,
            f"the reconstruction's positions differ from the scan's by {rms_px:.3g} px rms "
            "beyond any constant offset: not a reconstruction of this scan",
        )
    notes.append(f"positions agree with the scan's within {rms_px:.2g} px rms")
    if np.any(np.abs(offset) > 1e-3 * pixel):
        # the object pixel the reconstruction put under its position p sits under p - offset
        center = (image.center_m[0] - offset[0], image.center_m[1] - offset[1])
        image = replace(image, center_m=(float(center[0]), float(center[1])))
        notes.append(
            f"its frame is offset by ({offset[0] * 1e6:.4g}, {offset[1] * 1e6:.4g}) um (y, x) "
            "from the scan's: centre moved"
        )
    return image, notes


def check_coverage(image: ObjectImage, positions: np.ndarray, where: Path) -> None:
    """Refuse a label that does not reach under every probe position."""
    rows, cols = image.pixel_coordinates(positions).T
    height, width = image.values.shape
    inside = (rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)
    if not inside.all():
        first = int(np.argmin(inside))
        raise ScanError(
            where,
            f"the reconstruction ({height}x{width} px) does not reach {int((~inside).sum())} of "
            f"the scan's {len(positions)} positions (frame {first} at pixel "
            f"({rows[first]:.1f}, {cols[first]:.1f}))",
        )


def label_from_reconstruction(
    scan: ScanSource, spec: str, geometry: PlainGeometry = PlainGeometry()
) -> LabelResult:
    """The label of an open scan from the reconstruction ``spec`` names."""
    positions = np.concatenate([b.positions_m for b in scan.batches(4096)])
    if len(positions) == 0:
        raise ScanError(scan.path, "the scan has no frames")
    product = read_reconstruction(spec, geometry, scan, positions)
    image, notes = align_frames(product, positions, scan)
    check_coverage(image, positions, Path(spec))
    return LabelResult(image, f"{product.layout} {spec}", (*product.notes, *notes))
