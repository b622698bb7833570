"""The CXI 1.6 layout of a scan: every path string, and the one place positions change axes.

HDF5 and Zarr scans hold the same tree (Zarr has no soft links: ``/entry_1/data_1`` carries an
attribute naming the detector data path instead). Paths are relative to the file's root.

Positions: ptycl uses probe centres relative to the object, (N, 2) with columns (y, x). What a
file's translation (N, 3) (x, y, z) means depends on its writer (``ptycl.io.positions``);
``writer_convention`` reads the marks a writer leaves.

Below the paths: reading the layout's metadata from an open HDF5 file or Zarr group alike
(both index members by path), and opening an HDF5 file in the right mode for its state.
"""

from __future__ import annotations

import re
from math import prod
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the filters detectors write: bitshuffle, LZ4, Blosc, Zstd)
import numpy as np
import zarr

from ptycl.errors import ScanError
from ptycl.io.guards import (
    HDF5_ERRORS,
    check_attribute_count,
    check_hdf5_references,
    check_whole_read,
    open_hdf5_file,
    require_regular_file,
)
from ptycl.io.positions import CONVENTION_ATTR, CONVENTIONS, PTYCL_SCANS, PositionConvention
from ptycl.io.records import ScanGeometry, ScanMetadata

Root = h5py.Group | zarr.Group

CXI_VERSION = 160  # /cxi_version holds 160 for spec 1.6
CXI_VERSION_PATH = "cxi_version"

ENTRY = "entry_1"
DETECTOR = "entry_1/instrument_1/detector_1"
DETECTOR_DATA = f"{DETECTOR}/data"
DISTANCE = f"{DETECTOR}/distance"
X_PIXEL_SIZE = f"{DETECTOR}/x_pixel_size"
Y_PIXEL_SIZE = f"{DETECTOR}/y_pixel_size"
MASK = f"{DETECTOR}/mask"
ENERGY = "entry_1/instrument_1/source_1/energy"
SAMPLE = "entry_1/sample_1"
TRANSLATION = f"{SAMPLE}/geometry_1/translation"
DATA_GROUP = "entry_1/data_1"
DATA_LINK = f"{DATA_GROUP}/data"  # an HDF5 soft link to DETECTOR_DATA

# Foreign CXI files put frames and translations in any of the places the spec allows.
DATA_CANDIDATES = (DETECTOR_DATA, DATA_LINK)
TRANSLATION_CANDIDATES = (TRANSLATION, f"{DATA_GROUP}/translation", f"{DETECTOR}/translation")

# Zarr stand-in for the soft link: attribute of DATA_GROUP mapping member name -> target path.
ZARR_SOFT_LINKS_ATTR = "soft_links"

SAMPLE_FAMILY_ATTR = "sample_family"  # attribute of SAMPLE
# Root attributes: ptycl's own start with PTYCL_ATTR_PREFIX; the others are the scan's
# free-form metadata (ScanMetadata.attrs).
PTYCL_ATTR_PREFIX = "ptycl_"
SCAN_ID_ATTR = "ptycl_scan_id"  # absent in foreign files: the file's stem is the scan id

# Object images (labels, reconstructions): the CXI image group, plus the centre CXI lacks.
IMAGE = "entry_1/image_1"
IMAGE_DATA = "data"  # members of IMAGE
IMAGE_X_PIXEL_SIZE = "x_pixel_size"
IMAGE_Y_PIXEL_SIZE = "y_pixel_size"
IMAGE_CENTER = "center_m"  # (2,) metres, axes (y, x) as its "axes" attribute says
# CXI's own description of a real-space image: its extent in metres, (x, y) as CXI orders it,
# and "real" (not "diffraction") as its space; ptycl reads the pixel sizes and centre instead.
IMAGE_SIZE = "image_size"
IMAGE_DATA_SPACE = "data_space"
IMAGE_PROBE = "probe"  # optional (h, w) complex illumination on the image's pixel grid
# The CXI product layout (ptychodus's, and ptycl's reconstructions): the probe is image_1,
# the object image_2.
PRODUCT_OBJECT = "entry_1/image_2"
# Marks ptychodus leaves in its CXI files: its extension group, and its name as the program.
PTYCHODUS_GROUP = "entry_1/ptychodus"
PROCESS_PROGRAM = "entry_1/process_1/program"
# Where its extension group keeps the images' geometry: (y, x) pairs; the object's centre is
# that of its middle pixel, index (N - 1) / 2.
PRODUCT_OBJECT_PIXEL = (
    f"{PTYCHODUS_GROUP}/object_pixel_height_m",
    f"{PTYCHODUS_GROUP}/object_pixel_width_m",
)
PRODUCT_OBJECT_CENTER = (
    f"{PTYCHODUS_GROUP}/object_center_y_m",
    f"{PTYCHODUS_GROUP}/object_center_x_m",
)
PRODUCT_PROBE_PIXEL = (
    f"{PTYCHODUS_GROUP}/probe_pixel_height_m",
    f"{PTYCHODUS_GROUP}/probe_pixel_width_m",
)
PRODUCT_POSITION_INDEXES = f"{PTYCHODUS_GROUP}/probe_position_indexes"

# Streaming state written by ptycl; a file without it (a foreign CXI file) is finished.
STREAM = "entry_1/ptycl_stream"
COMMITTED_FRAMES = f"{STREAM}/committed_frames"  # HDF5: scalar int64 dataset
COMPLETE = f"{STREAM}/complete"  # HDF5: scalar int8 dataset, 1 once the writer is done
# Zarr: the same two facts as attributes of the root group, written after each frame.
ZARR_COMMITTED_ATTR = "ptycl_committed_frames"
ZARR_COMPLETE_ATTR = "ptycl_complete"

MASK_BAD_PIXEL = 1  # CXI mask bit 0: invalid pixel


def mask_to_cxi(mask: np.ndarray) -> np.ndarray:
    """Bool bad-pixel mask -> CXI uint32 bit mask."""
    return np.where(mask, MASK_BAD_PIXEL, 0).astype(np.uint32)


def mask_from_cxi(mask: np.ndarray) -> np.ndarray:
    """CXI bit mask (any bit set marks the pixel as unusable) -> bool, True = bad."""
    return np.asarray(mask) != 0


def open_hdf5(path: Path) -> h5py.File:
    """Open an HDF5 file for reading, in SWMR mode when a writer streams into it
    (``guards.open_hdf5_file``).

    Refused before HDF5 reads anything it points to: a FIFO or device in the file's place,
    and external links, virtual datasets or external raw storage leading out of its directory
    (``guards.check_hdf5_references``).
    """
    require_regular_file(path)
    try:
        f = open_hdf5_file(path)
    except FileNotFoundError:
        raise ScanError(path, "no such file") from None
    except HDF5_ERRORS as exc:
        raise ScanError(path, _why_unopenable(exc)) from None
    try:
        check_hdf5_references(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _why_unopenable(exc: Exception) -> str:
    """HDF5's open errors, said in a few words."""
    text = str(exc)
    cut = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
    if cut:
        return f"truncated: {cut[1]} of {cut[2]} bytes present"
    if "signature not found" in text:
        return "not an HDF5 file"
    if "unable to lock file" in text:
        return "locked by a writer that is not writing in SWMR mode"
    return f"not a readable HDF5 file ({text.splitlines()[0] if text else exc.__class__.__name__})"


def _is_array(root: Root, member: str) -> bool:
    return member in root and hasattr(root[member], "shape")  # groups have no shape


def attributes(node: Root, path: Path) -> dict[str, Any]:
    """An object's attributes; in HDF5 each one's declared size is checked before it is read
    (a damaged dataspace can claim any size). Zarr's sit in a size-checked zarr.json."""
    if isinstance(node, zarr.Group | zarr.Array):
        return node.attrs.asdict()
    check_attribute_count(path, f"/{node.name.lstrip('/')}", len(node.attrs))
    for name in node.attrs:
        attr = node.attrs.get_id(name)
        check_whole_read(path, f"attribute {name!r}", attr.shape or (), attr.dtype)
    return dict(node.attrs.items())


def locate_frames(root: Root, path: Path) -> str:
    """Path of the detector data (N, H, W), following a Zarr scan's soft-link attribute."""
    if ENTRY not in root:
        raise ScanError(path, f"not a CXI scan: no /{ENTRY} group")
    links = (
        attributes(root[DATA_GROUP], path).get(ZARR_SOFT_LINKS_ATTR) if DATA_GROUP in root else None
    )
    target = str(links.get("data", "")).lstrip("/") if isinstance(links, dict) else ""
    if target and _is_array(root, target):
        return target
    for candidate in DATA_CANDIDATES:
        if _is_array(root, candidate):
            return candidate
    raise ScanError(path, f"not a scan: missing detector data /{DETECTOR_DATA}")


def locate_translation(root: Root, path: Path) -> str:
    for candidate in TRANSLATION_CANDIDATES:
        if _is_array(root, candidate):
            return candidate
    raise ScanError(path, f"missing dataset /{TRANSLATION} (probe positions)")


def _short_string(root: Root, member: str) -> str | None:
    """A scalar string dataset (a program name), or None where there is none."""
    if not _is_array(root, member):
        return None
    node = root[member]
    if tuple(node.shape) != () or np.dtype(node.dtype).kind not in "SOU":
        return None
    value = node[()]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def writer_convention(root: Root, translation: str, path: Path) -> PositionConvention | None:
    """What the file's writer says its translations mean, or None where it says nothing."""
    declared = attributes(root[translation], path).get(CONVENTION_ATTR)
    if isinstance(declared, bytes):
        declared = declared.decode("utf-8", "replace")
    if declared is not None:
        if declared not in CONVENTIONS:
            raise ScanError(
                path,
                f"/{translation} attribute {CONVENTION_ATTR} is {declared!r}, not probe or sample",
            )
        return PositionConvention(declared, f"the file says so (attribute {CONVENTION_ATTR})")
    program = (_short_string(root, PROCESS_PROGRAM) or "").strip().lower()
    if PTYCHODUS_GROUP in root or program == "ptychodus":
        return PositionConvention("probe", "written by ptychodus, which stores probe positions")
    if SCAN_ID_ATTR in attributes(root, path):
        return PTYCL_SCANS
    return None


def positive_scalar(root: Root, member: str, what: str, path: Path) -> float:
    """A positive finite number stored as a one-element array; its declared shape and type
    are checked before it is read."""
    if not _is_array(root, member):
        raise ScanError(path, f"missing dataset /{member} ({what})")
    node = root[member]
    shape, dtype = tuple(node.shape), np.dtype(node.dtype)
    if prod(shape) != 1 or dtype.kind not in "iuf":
        raise ScanError(path, f"/{member} ({what}) must be one number, found {dtype}{shape}")
    number = float(np.asarray(node[()]).reshape(-1)[0])
    if not np.isfinite(number) or number <= 0:
        raise ScanError(path, f"/{member} ({what}) is {number}, must be positive")
    return number


def read_metadata(root: Root, path: Path, frame_shape: tuple[int, int]) -> ScanMetadata:
    """Geometry, sample family, mask and free-form attributes of an open scan."""
    geometry = ScanGeometry(
        energy_j=positive_scalar(root, ENERGY, "source energy, J", path),
        distance_m=positive_scalar(root, DISTANCE, "detector distance, m", path),
        detector_pixel_m=(
            positive_scalar(root, Y_PIXEL_SIZE, "detector pixel height, m", path),
            positive_scalar(root, X_PIXEL_SIZE, "detector pixel width, m", path),
        ),
        frame_shape=frame_shape,
    )
    mask = None
    if MASK in root:
        node = root[MASK]
        if not hasattr(node, "shape"):
            raise ScanError(path, f"/{MASK} (mask) is a group, not an array")
        shape, dtype = tuple(node.shape), np.dtype(node.dtype)
        if shape != frame_shape or dtype.kind not in "iub":  # checked before it is read
            raise ScanError(path, f"mask is {dtype}{shape}, frames are {frame_shape}")
        mask = mask_from_cxi(node[...])
    family = attributes(root[SAMPLE], path).get(SAMPLE_FAMILY_ATTR) if SAMPLE in root else None
    attrs = attributes(root, path)
    return ScanMetadata(
        scan_id=str(attrs.get(SCAN_ID_ATTR, path.stem)),
        geometry=geometry,
        sample_family=None if family is None else str(family),
        mask=mask,
        attrs={k: str(v) for k, v in attrs.items() if not k.startswith(PTYCL_ATTR_PREFIX)},
    )
