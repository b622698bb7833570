"""Object images (labels, reconstructions) on disk: the CXI image group ``/entry_1/image_1``.

``data`` is the complex64 image [y, x]; ``x_pixel_size`` and ``y_pixel_size`` are metres;
``center_m`` is the (y, x) position in metres of the centre pixel (H // 2, W // 2) in the scan's
coordinate frame; ``image_size`` (its (x, y) extent in metres) and ``data_space`` ("real") are
CXI's own description of it, written for other readers. The group sits inside a scan file
(HDF5 or Zarr) or alone in a label file ``<scan stem>.label.h5`` beside the scan, which may
arrive after the scan's last frame.
"""

from __future__ import annotations

import os
from math import prod
from pathlib import Path

import h5py
import numpy as np
import zarr

from ptycl.errors import ScanError
from ptycl.io import cxi
from ptycl.io.guards import (
    HDF5_ERRORS,
    MAX_IMAGE_PIXELS,
    ZARR_ERRORS,
    ContainedStore,
    check_hdf5_stored,
    check_zarr_stored,
    require_no_link,
    storage_errors,
)
from ptycl.io.records import ObjectImage, center_from_middle

Group = h5py.Group | zarr.Group
LABEL_SUFFIX = ".label.h5"


def label_path_for(scan_path: str | Path) -> Path:
    """``dir/scan0003_siemens.h5`` (or ``.zarr``) -> ``dir/scan0003_siemens.label.h5``."""
    scan_path = Path(scan_path)
    return scan_path.with_name(scan_path.stem + LABEL_SUFFIX)


def put_array(group: Group, name: str, data: np.ndarray) -> None:
    if isinstance(group, h5py.Group):
        group.create_dataset(name, data=data)
    else:
        # Every chunk stored, even an all-zero one: readers refuse an image with chunks missing.
        group.create_array(
            name, data=np.asarray(data), compressors=None, config={"write_empty_chunks": True}
        )


def write_image_group(
    group: Group, values: np.ndarray, pixel_m: tuple[float, float], center_m: tuple[float, float]
) -> None:
    """A CXI real-space image group: data, pixel sizes, ptycl's centre, CXI's extent."""
    put_array(group, cxi.IMAGE_DATA, values.astype(np.complex64))
    put_array(group, cxi.IMAGE_Y_PIXEL_SIZE, np.float64(pixel_m[0]))
    put_array(group, cxi.IMAGE_X_PIXEL_SIZE, np.float64(pixel_m[1]))
    put_array(group, cxi.IMAGE_CENTER, np.asarray(center_m, dtype=np.float64))
    group[cxi.IMAGE_CENTER].attrs["axes"] = "y x"
    height, width = values.shape[-2:]
    put_array(group, cxi.IMAGE_SIZE, np.asarray([width * pixel_m[1], height * pixel_m[0]]))
    if isinstance(group, h5py.Group):
        group.create_dataset(cxi.IMAGE_DATA_SPACE, data="real")
    else:  # a string, as ptycl's Zarr tree keeps them: an attribute
        group.attrs[cxi.IMAGE_DATA_SPACE] = "real"


def write_object_image(target: str | Path | Group, image: ObjectImage) -> None:
    """Write ``image`` as ``/entry_1/image_1`` into an open HDF5/Zarr group (a scan being
    created) or into a new HDF5 file at a path (written aside, then renamed into place, so a
    reader never opens a half-written label)."""
    if isinstance(target, h5py.Group | zarr.Group):
        group = target.require_group(cxi.IMAGE)
        write_image_group(group, image.values, image.pixel_m, image.center_m)
        if image.probe is not None:
            put_array(group, cxi.IMAGE_PROBE, image.probe.astype(np.complex64))
        return
    path = Path(target)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(partial, "w", libver=("v110", "v110")) as f:
            write_object_image(f, image)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # a failed write leaves nothing behind
        raise


def object_group(root: Group) -> str:
    """Where the object image is: ``image_2`` in the CXI product layout (ptycl's
    reconstructions, ptychodus's products: the probe in ``image_1``), else ``image_1``."""
    product = root.get(cxi.PRODUCT_OBJECT)
    if product is not None and cxi.IMAGE_DATA in product:
        return cxi.PRODUCT_OBJECT
    return cxi.IMAGE


def has_object_image(root: Group) -> bool:
    group = object_group(root)
    return group in root and cxi.IMAGE_DATA in root[group]


def complex_image_array(
    root: Group, member: str, what: str, path: str | Path, leading_axes: int = 0
) -> np.ndarray:
    """A complex (..., H, W) array of bounded size that the file stores in full, checked from
    its declared shape, type and storage before it is read; up to ``leading_axes`` axes
    (layers, probe modes) may come before the image's two."""
    node = root[member]
    if not hasattr(node, "shape"):
        raise ScanError(path, f"{what} /{member} is a group, not an array")
    shape, dtype = tuple(node.shape), np.dtype(node.dtype)
    if not 2 <= len(shape) <= 2 + leading_axes or dtype.kind != "c":
        wanted = "2-D" if not leading_axes else f"2-D to {2 + leading_axes}-D"
        raise ScanError(path, f"{what} must be {wanted} complex, found {dtype}{shape}")
    if prod(shape) > MAX_IMAGE_PIXELS:
        size = "x".join(map(str, shape))
        raise ScanError(path, f"{what} of {size} values is larger than ptycl reads")
    if isinstance(node, zarr.Array):
        check_zarr_stored(node, Path(path), what)
    else:
        check_hdf5_stored(node, Path(path), what)
    return np.asarray(node[...])


def _finite_pair(root: Group, members: tuple[str, str], path: Path) -> tuple[float, float]:
    values = []
    for member in members:
        node = root[member]
        if not hasattr(node, "shape") or prod(node.shape) != 1 or node.dtype.kind not in "iuf":
            raise ScanError(path, f"/{member} must be one number")
        values.append(float(np.asarray(node[()]).reshape(-1)[0]))
    if not np.isfinite(values).all():
        raise ScanError(path, f"/{members[0]} or /{members[1]} is not finite")
    return values[0], values[1]


def _center(
    root: Group, group: str, shape: tuple[int, ...], pixel_m: tuple[float, float], path: Path
) -> tuple[float, float]:
    """ptycl's ``center_m``; else a CXI product's centre of the middle pixel, converted; else
    the origin."""
    member = f"{group}/{cxi.IMAGE_CENTER}"
    if member in root:
        node = root[member]
        if not hasattr(node, "shape") or tuple(node.shape) != (2,) or node.dtype.kind not in "iuf":
            raise ScanError(path, f"/{member} must be two numbers (y, x)")
        y, x = np.asarray(node[...], dtype=np.float64)
        if not (np.isfinite(y) and np.isfinite(x)):
            raise ScanError(path, f"/{member} is not finite")
        return float(y), float(x)
    if group == cxi.PRODUCT_OBJECT and all(m in root for m in cxi.PRODUCT_OBJECT_CENTER):
        return center_from_middle(
            _finite_pair(root, cxi.PRODUCT_OBJECT_CENTER, path), shape, pixel_m
        )
    return (0.0, 0.0)


def _pixel(
    root: Group, group: str, shape: tuple[int, ...], path: Path, elsewhere: tuple[str, str]
) -> tuple[float, float]:
    """The image group's pixel sizes; else those a CXI product keeps ``elsewhere``; else its
    CXI ``image_size`` (x, y) over its shape."""
    own = (f"{group}/{cxi.IMAGE_Y_PIXEL_SIZE}", f"{group}/{cxi.IMAGE_X_PIXEL_SIZE}")
    extent_member = f"{group}/{cxi.IMAGE_SIZE}"
    if own[1] not in root and all(member in root for member in elsewhere):
        own = elsewhere
    elif own[1] not in root and extent_member in root:
        node = root[extent_member]
        if not hasattr(node, "shape") or len(node.shape) != 1 or not 2 <= node.shape[0] <= 3:
            raise ScanError(path, f"/{extent_member} must be 2 or 3 numbers")
        extent = np.asarray(node[()], dtype=np.float64)
        pixel = (float(extent[1] / shape[-2]), float(extent[0] / shape[-1]))
        if not (np.isfinite(pixel).all() and min(pixel) > 0):
            raise ScanError(path, f"/{extent_member} gives pixels of {pixel} m")
        return pixel
    return (
        cxi.positive_scalar(root, own[0], "pixel height", path),
        cxi.positive_scalar(root, own[1], "pixel width", path),
    )


def _probe(root: Group, group: str, pixel_m: tuple[float, float], path: Path) -> np.ndarray | None:
    """The probe beside the object: a member of a label's image group, or the CXI product's
    ``image_1`` (its first mode) where it shares the object's pixel grid."""
    if group == cxi.IMAGE:
        member = f"{cxi.IMAGE}/{cxi.IMAGE_PROBE}"
        return complex_image_array(root, member, "probe", path) if member in root else None
    member = f"{cxi.IMAGE}/{cxi.IMAGE_DATA}"
    if member not in root:
        return None
    modes = complex_image_array(root, member, "probe", path, leading_axes=2)
    probe_pixel = _pixel(root, cxi.IMAGE, modes.shape, path, cxi.PRODUCT_PROBE_PIXEL)
    if not np.allclose(probe_pixel, pixel_m, rtol=1e-6):
        return None
    return modes.reshape(-1, *modes.shape[-2:])[0]


def read_object_image_from(root: Group, path: str | Path) -> ObjectImage:
    """The object image of an open file: a label, or a reconstruction in the CXI product layout
    (``object_group``; ptychodus's own, whose geometry sits under ``/entry_1/ptychodus`` and
    whose layers are multiplied into one); ``path`` names the file in errors."""
    path = Path(path)
    group = object_group(root)
    layers = 1 if group == cxi.PRODUCT_OBJECT else 0
    try:
        values = complex_image_array(
            root, f"{group}/{cxi.IMAGE_DATA}", "object image", path, leading_axes=layers
        )
        values = np.prod(values.reshape(-1, *values.shape[-2:]), axis=0)
        pixel_m = _pixel(root, group, values.shape, path, cxi.PRODUCT_OBJECT_PIXEL)
        center_m = _center(root, group, values.shape, pixel_m, path)
        probe = _probe(root, group, pixel_m, path)
    except (*HDF5_ERRORS, *ZARR_ERRORS) as exc:
        raise ScanError(path, f"object image unreadable ({exc})") from None
    return ObjectImage(
        values=values.astype(np.complex64, copy=False),
        pixel_m=pixel_m,
        center_m=center_m,
        probe=None if probe is None else probe.astype(np.complex64, copy=False),
    )


def read_object_image(path: str | Path) -> ObjectImage:
    """The object image of a label file, a reconstruction or a scan (HDF5 file or Zarr group)."""
    path = Path(path)
    require_no_link(path)
    if path.is_dir():
        try:
            root = zarr.open_group(ContainedStore(path), mode="r")
        except (zarr.errors.GroupNotFoundError, *ZARR_ERRORS):
            raise ScanError(path, "not a Zarr group") from None
        with storage_errors(path, "object image unreadable", ZARR_ERRORS):
            if not has_object_image(root):
                raise ScanError(path, f"no object image ({cxi.IMAGE}/{cxi.IMAGE_DATA})")
            return read_object_image_from(root, path)
    f = cxi.open_hdf5(path)
    with f, storage_errors(path, "object image unreadable"):
        if not has_object_image(f):
            raise ScanError(path, f"no object image ({cxi.IMAGE}/{cxi.IMAGE_DATA})")
        return read_object_image_from(f, path)
