"""ptychodus 1.7's product files: its own HDF5 layout, its CXI layout and its NPZ archive.

A product is a reconstruction: the object, the probe and the probe positions.

- HDF5 (``ptychodus.api.io.save_product``): root attributes (``photon_energy_eV``,
  ``detector_object_distance_m``, ...), ``object`` (layers, y, x) with attributes
  ``center_x_m``, ``center_y_m``, ``pixel_width_m``, ``pixel_height_m``; ``probe``
  (OPR modes, modes, y, x) with its pixel sizes; ``probe_position_x_m``, ``_y_m`` and
  ``probe_position_indexes``.
- CXI (``ptychodus.plugins.cxi_file``): the probe in ``/entry_1/image_1``, the object in
  ``/entry_1/image_2``, their pixel sizes and the object's centre under ``/entry_1/ptychodus``,
  the probe positions (x, y, z) in ``/entry_1/sample_1/geometry_1/translation``.
- NPZ: the HDF5 layout's names as keys, the object's and probe's attributes as keys of their
  own, prefixed ``object_`` and ``probe_``.

ptychodus centres an image at index (N - 1) / 2, ptycl at N // 2 (``records.center_from_middle``).
A multi-layer object is read as the product of its layers (the projected transmission, as
ptychodus flattens it); of a probe, its first mode of its first OPR component.

The writer puts both the HDF5 and the CXI layout into one file, sharing the arrays through
hard links, so that either of ptychodus's product readers opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

import h5py
import numpy as np

from ptycl.errors import ScanError
from ptycl.io import cxi
from ptycl.io.guards import MAX_IMAGE_PIXELS
from ptycl.io.object_image import (
    Group,
    complex_image_array,
    put_array,
    read_object_image_from,
    write_image_group,
)
from ptycl.io.positions import CONVENTION_ATTR, PTYCL_RECONSTRUCTIONS, PositionConvention
from ptycl.io.records import EV_J, ObjectImage, center_from_middle

# The HDF5 layout's names (ptychodus.api.io.ProductFileKeys)
OBJECT = "object"
PROBE = "probe"
POSITION_X = "probe_position_x_m"
POSITION_Y = "probe_position_y_m"
POSITION_INDEXES = "probe_position_indexes"
CENTER_X, CENTER_Y = "center_x_m", "center_y_m"
PIXEL_WIDTH, PIXEL_HEIGHT = "pixel_width_m", "pixel_height_m"
PHOTON_ENERGY_EV = "photon_energy_eV"
DISTANCE = "detector_object_distance_m"
LAYER_SPACING = "object_layer_spacing_m"
PROBE_GROUP = cxi.IMAGE  # image_1 of the CXI layout


@dataclass(frozen=True)
class Product:
    """A reconstruction as ptycl uses it."""

    image: ObjectImage  # centre at index N // 2; the probe when it shares the object's grid
    positions_m: np.ndarray | None  # (N, 2) (y, x) probe positions it was reconstructed with
    layout: str  # which layout it was read from, for messages
    notes: tuple[str, ...] = ()  # what was done to read it (layers multiplied, probe dropped)


def is_hdf5_product(f: h5py.File) -> bool:
    return OBJECT in f and POSITION_X in f


def is_cxi_product(f: h5py.File) -> bool:
    return f"{cxi.PRODUCT_OBJECT}/{cxi.IMAGE_DATA}" in f


def _flatten_layers(values: np.ndarray, notes: list[str]) -> np.ndarray:
    if values.ndim == 3 and values.shape[0] > 1:
        notes.append(f"{values.shape[0]} object layers multiplied into one")
    return np.prod(values.reshape(-1, *values.shape[-2:]), axis=0)


def _probe_on_grid(
    probe: np.ndarray | None,
    probe_pixel_m: tuple[float, float] | None,
    pixel_m: tuple[float, float],
    notes: list[str],
) -> np.ndarray | None:
    """The probe's first mode, where it shares the object's pixel grid."""
    if probe is None:
        return None
    if probe_pixel_m is not None and not np.allclose(probe_pixel_m, pixel_m, rtol=1e-6):
        notes.append("probe left out: its pixel differs from the object's")
        return None
    return probe.reshape(-1, *probe.shape[-2:])[0].astype(np.complex64)


def _number(value: object, what: str, path: Path) -> float:
    number = float(np.asarray(value).reshape(-1)[0]) if np.size(value) == 1 else np.nan
    if not np.isfinite(number):
        raise ScanError(path, f"{what} is not a finite number")
    return number


def _product(
    values: np.ndarray,
    pixel_m: tuple[float, float],
    middle_m: tuple[float, float],
    probe: np.ndarray | None,
    probe_pixel_m: tuple[float, float] | None,
    positions_m: np.ndarray | None,
    layout: str,
    path: Path,
) -> Product:
    notes: list[str] = []
    if min(pixel_m) <= 0:
        raise ScanError(path, f"{layout}: object pixel size {pixel_m} is not positive")
    values = _flatten_layers(values, notes).astype(np.complex64)
    image = ObjectImage(
        values=values,
        pixel_m=pixel_m,
        center_m=center_from_middle(middle_m, values.shape, pixel_m),
        probe=_probe_on_grid(probe, probe_pixel_m, pixel_m, notes),
    )
    if positions_m is not None and not np.isfinite(positions_m).all():
        raise ScanError(path, f"{layout}: probe positions are not all finite")
    return Product(image, positions_m, layout, tuple(notes))


def _positions(x_m: np.ndarray, y_m: np.ndarray, path: Path, layout: str) -> np.ndarray:
    x_m, y_m = np.asarray(x_m, np.float64).reshape(-1), np.asarray(y_m, np.float64).reshape(-1)
    if len(x_m) != len(y_m):
        raise ScanError(path, f"{layout}: {len(x_m)} x positions but {len(y_m)} y positions")
    return np.stack([y_m, x_m], axis=1)


def _vector(f: h5py.File, member: str, path: Path, max_rows: int = 1 << 24) -> np.ndarray:
    node = f[member]
    if not isinstance(node, h5py.Dataset) or node.ndim != 1 or node.shape[0] > max_rows:
        raise ScanError(path, f"/{member} must be a 1-D array of at most {max_rows} numbers")
    if node.dtype.kind not in "iuf":
        raise ScanError(path, f"/{member} is {node.dtype}, not numbers")
    return np.asarray(node[()], dtype=np.float64)


def read_hdf5_product(f: h5py.File, path: Path) -> Product:
    layout = "ptychodus product (HDF5)"
    attrs = cxi.attributes(f[OBJECT], path)
    missing = [k for k in (CENTER_X, CENTER_Y, PIXEL_WIDTH, PIXEL_HEIGHT) if k not in attrs]
    if missing:
        raise ScanError(path, f"{layout}: /{OBJECT} lacks the attributes {', '.join(missing)}")
    values = complex_image_array(f, OBJECT, "object", path, leading_axes=1)
    pixel_m = (
        _number(attrs[PIXEL_HEIGHT], "object pixel height", path),
        _number(attrs[PIXEL_WIDTH], "object pixel width", path),
    )
    middle_m = (
        _number(attrs[CENTER_Y], "object centre y", path),
        _number(attrs[CENTER_X], "object centre x", path),
    )
    probe = probe_pixel_m = None
    if PROBE in f:
        probe = complex_image_array(f, PROBE, "probe", path, leading_axes=2)
        probe_attrs = cxi.attributes(f[PROBE], path)
        probe_pixel_m = (
            _number(probe_attrs.get(PIXEL_HEIGHT, pixel_m[0]), "probe pixel height", path),
            _number(probe_attrs.get(PIXEL_WIDTH, pixel_m[1]), "probe pixel width", path),
        )
    positions = _positions(_vector(f, POSITION_X, path), _vector(f, POSITION_Y, path), path, layout)
    return _product(values, pixel_m, middle_m, probe, probe_pixel_m, positions, layout, path)


def read_cxi_product(f: h5py.File, path: Path) -> Product:
    """The CXI layout, as ptychodus writes it and ptycl's reconstructions too (the object
    image as ``object_image`` reads it, the positions from the translation)."""
    layout = "CXI product (object in image_2, probe in image_1)"
    notes = []
    if not all(member in f for member in cxi.PRODUCT_OBJECT_CENTER):
        if f"{cxi.PRODUCT_OBJECT}/{cxi.IMAGE_CENTER}" not in f:
            notes.append("no object centre in the file: taken as the origin")
    image = read_object_image_from(f, path)
    if f"{PROBE_GROUP}/{cxi.IMAGE_DATA}" in f and image.probe is None:
        notes.append("probe left out: its pixel differs from the object's")
    positions = None
    translation = next((m for m in cxi.TRANSLATION_CANDIDATES if m in f), None)
    if translation is not None:
        convention = cxi.writer_convention(f, translation, path) or PositionConvention(
            "probe", "a CXI product, as ptychodus writes it"
        )
        node = f[translation]
        if node.ndim != 2 or node.shape[1] < 2 or node.shape[0] > 1 << 24:
            raise ScanError(path, f"/{translation} must be (N, 3), found {node.shape}")
        positions = convention.positions_from_translation(node[()])
        if not np.isfinite(positions).all():
            raise ScanError(path, f"{layout}: probe positions are not all finite")
    return Product(image, positions, layout, tuple(notes))


def npz_header(archive: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and type an archive member declares, read from its .npy header alone."""
    with archive.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(member)
    return tuple(shape), np.dtype(dtype)


def npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """A member of bounded size: an archive's members are compressed and may declare any
    size, so the header is checked before the member is inflated."""
    shape, dtype = npz_header(archive, key)
    if prod(shape) > MAX_IMAGE_PIXELS:
        raise ScanError(path, f"{key} declares {dtype}{shape}, larger than ptycl reads")
    return np.asarray(archive[key])


def read_npz_product(archive: np.lib.npyio.NpzFile, path: Path) -> Product:
    layout = "ptychodus product (NPZ)"
    values = npz_array(archive, OBJECT, path)
    if values.dtype.kind != "c" or not 2 <= values.ndim <= 3:
        raise ScanError(
            path, f"{layout}: object must be 2-D or 3-D complex, found {values.dtype}{values.shape}"
        )
    pixel_m = (
        _number(archive[f"object_{PIXEL_HEIGHT}"], "object pixel height", path),
        _number(archive[f"object_{PIXEL_WIDTH}"], "object pixel width", path),
    )
    middle_m = (
        _number(archive[f"object_{CENTER_Y}"], "object centre y", path),
        _number(archive[f"object_{CENTER_X}"], "object centre x", path),
    )
    probe = probe_pixel_m = None
    if PROBE in archive:
        probe = npz_array(archive, PROBE, path)
        if probe.dtype.kind != "c" or probe.ndim < 2:
            probe = None
        elif f"probe_{PIXEL_WIDTH}" in archive:
            probe_pixel_m = (
                _number(archive[f"probe_{PIXEL_HEIGHT}"], "probe pixel height", path),
                _number(archive[f"probe_{PIXEL_WIDTH}"], "probe pixel width", path),
            )
    positions = None
    if POSITION_X in archive and POSITION_Y in archive:
        positions = _positions(archive[POSITION_X], archive[POSITION_Y], path, layout)
    return _product(values, pixel_m, middle_m, probe, probe_pixel_m, positions, layout, path)


def is_npz_product(archive: np.lib.npyio.NpzFile) -> bool:
    keys = (PIXEL_WIDTH, PIXEL_HEIGHT, CENTER_X, CENTER_Y)
    return OBJECT in archive and all(f"object_{key}" in archive for key in keys)


@dataclass(frozen=True)
class ProductContents:
    """What ptycl writes as a product: the object (with ptycl's centre), the probe on its
    grid, the positions, and the geometry ptychodus's readers require."""

    image: ObjectImage
    probe: np.ndarray  # (h, w) complex, on the image's pixel grid
    positions_m: np.ndarray  # (N, 2) (y, x)
    energy_j: float
    distance_m: float
    name: str


def write_product(f: Group, product: ProductContents) -> None:
    """The CXI product layout into an open HDF5 file or Zarr group, and in HDF5 ptychodus's
    own product layout beside it (sharing the arrays through hard links)."""
    image = product.image
    pixel_m = image.pixel_m
    middle_m = image.middle_m
    positions = np.asarray(product.positions_m, dtype=np.float64).reshape(-1, 2)
    indexes = np.arange(len(positions), dtype=np.int64)

    # CXI layout: the object in image_2, the probe in image_1
    write_image_group(f.require_group(cxi.PRODUCT_OBJECT), image.values, pixel_m, image.center_m)
    probe_group = f.require_group(PROBE_GROUP)
    write_image_group(probe_group, product.probe[None, None], pixel_m, (0.0, 0.0))
    probe_group[cxi.IMAGE_DATA].attrs["axes"] = "coherent:incoherent:y:x"
    put_array(f, cxi.TRANSLATION, PTYCL_RECONSTRUCTIONS.translation_from_positions(positions))
    f[cxi.TRANSLATION].attrs.update({"units": "m", CONVENTION_ATTR: PTYCL_RECONSTRUCTIONS.kind})
    for member, value in (
        (cxi.ENERGY, product.energy_j),
        (cxi.DISTANCE, product.distance_m),
        (cxi.PRODUCT_OBJECT_PIXEL[0], pixel_m[0]),
        (cxi.PRODUCT_OBJECT_PIXEL[1], pixel_m[1]),
        (cxi.PRODUCT_OBJECT_CENTER[0], middle_m[0]),
        (cxi.PRODUCT_OBJECT_CENTER[1], middle_m[1]),
        (cxi.PRODUCT_PROBE_PIXEL[0], pixel_m[0]),
        (cxi.PRODUCT_PROBE_PIXEL[1], pixel_m[1]),
    ):
        put_array(f, member, np.float64(value))
    put_array(f, cxi.PRODUCT_POSITION_INDEXES, indexes)
    if not isinstance(f, h5py.Group):
        return  # Zarr has no hard links; ptychodus reads HDF5 only

    # HDF5 layout: the same arrays under the names ptychodus's own reader looks for
    f.attrs.update(
        {
            "name": product.name,
            "comments": "written by ptycl",
            DISTANCE: product.distance_m,
            PHOTON_ENERGY_EV: product.energy_j / EV_J,
        }
    )
    f[OBJECT] = f[f"{cxi.PRODUCT_OBJECT}/{cxi.IMAGE_DATA}"]  # a hard link: one array
    f[OBJECT].attrs.update(
        {
            CENTER_X: middle_m[1],
            CENTER_Y: middle_m[0],
            PIXEL_WIDTH: pixel_m[1],
            PIXEL_HEIGHT: pixel_m[0],
        }
    )
    f[PROBE] = f[f"{PROBE_GROUP}/{cxi.IMAGE_DATA}"]
    f[PROBE].attrs.update({PIXEL_WIDTH: pixel_m[1], PIXEL_HEIGHT: pixel_m[0]})
    f[POSITION_INDEXES] = indexes
    f[POSITION_X] = positions[:, 1]
    f[POSITION_Y] = positions[:, 0]
    f[LAYER_SPACING] = np.zeros(0, dtype=np.float64)
