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
from ptycl.io.records import ObjectImage

Group = h5py.Group | zarr.Group
LABEL_SUFFIX = ".label.h5"


def label_path_for(scan_path: str | Path) -> Path:
    """``dir/scan0003_siemens.h5`` (or ``.zarr``) -> ``dir/scan0003_siemens.label.h5``."""
    scan_path = Path(scan_path)
    return scan_path.with_name(scan_path.stem + LABEL_SUFFIX)


def _put(group: Group, name: str, data: np.ndarray) -> None:
    if isinstance(group, h5py.Group):
        group.create_dataset(name, data=data)
    else:
        # Every chunk stored, even an all-zero one: readers refuse an image with chunks missing.
        group.create_array(
            name, data=np.asarray(data), compressors=None, config={"write_empty_chunks": True}
        )


def write_object_image(target: str | Path | Group, image: ObjectImage) -> None:
    """Write ``image`` as ``/entry_1/image_1`` into an open HDF5/Zarr group (a scan being
    created) or into a new HDF5 file at a path (written aside, then renamed into place, so a
    reader never opens a half-written label)."""
    if isinstance(target, h5py.Group | zarr.Group):
        group = target.require_group(cxi.IMAGE)
        _put(group, cxi.IMAGE_DATA, image.values.astype(np.complex64))
        _put(group, cxi.IMAGE_Y_PIXEL_SIZE, np.float64(image.pixel_m[0]))
        _put(group, cxi.IMAGE_X_PIXEL_SIZE, np.float64(image.pixel_m[1]))
        _put(group, cxi.IMAGE_CENTER, np.asarray(image.center_m, dtype=np.float64))
        group[cxi.IMAGE_CENTER].attrs["axes"] = "y x"
        height, width = image.values.shape
        extent = [width * image.pixel_m[1], height * image.pixel_m[0]]
        _put(group, cxi.IMAGE_SIZE, np.asarray(extent, dtype=np.float64))
        if isinstance(group, h5py.Group):
            group.create_dataset(cxi.IMAGE_DATA_SPACE, data="real")
        else:  # a string, as ptycl's Zarr tree keeps them: an attribute
            group.attrs[cxi.IMAGE_DATA_SPACE] = "real"
        if image.probe is not None:
            _put(group, cxi.IMAGE_PROBE, image.probe.astype(np.complex64))
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


def has_object_image(root: Group) -> bool:
    return cxi.IMAGE in root and cxi.IMAGE_DATA in root[cxi.IMAGE]


def _image_array(root: Group, member: str, what: str, path: str | Path) -> np.ndarray:
    """A 2-D complex array of bounded size that the file stores in full, checked from its
    declared shape, type and storage before it is read."""
    node = root[member]
    if not hasattr(node, "shape"):
        raise ScanError(path, f"{what} /{member} is a group, not an array")
    shape, dtype = tuple(node.shape), np.dtype(node.dtype)
    if len(shape) != 2 or dtype.kind != "c":
        raise ScanError(path, f"{what} must be 2-D complex, found {dtype}{shape}")
    if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise ScanError(path, f"{what} of {shape[0]}x{shape[1]} pixels is larger than ptycl reads")
    if isinstance(node, zarr.Array):
        check_zarr_stored(node, Path(path), what)
    else:
        check_hdf5_stored(node, Path(path), what)
    return np.asarray(node[...])


def _center(root: Group, path: str | Path) -> tuple[float, float]:
    member = f"{cxi.IMAGE}/{cxi.IMAGE_CENTER}"
    if member not in root:
        return (0.0, 0.0)
    node = root[member]
    if not hasattr(node, "shape") or tuple(node.shape) != (2,) or node.dtype.kind not in "iuf":
        raise ScanError(path, f"/{member} must be two numbers (y, x)")
    y, x = np.asarray(node[...], dtype=np.float64)
    if not (np.isfinite(y) and np.isfinite(x)):
        raise ScanError(path, f"/{member} is not finite")
    return float(y), float(x)


def read_object_image_from(root: Group, path: str | Path) -> ObjectImage:
    """The image group of an open file; ``path`` names the file in errors."""
    path = Path(path)
    try:
        values = _image_array(root, f"{cxi.IMAGE}/{cxi.IMAGE_DATA}", "object image", path)
        pixel_m = (
            cxi.positive_scalar(
                root, f"{cxi.IMAGE}/{cxi.IMAGE_Y_PIXEL_SIZE}", "pixel height", path
            ),
            cxi.positive_scalar(root, f"{cxi.IMAGE}/{cxi.IMAGE_X_PIXEL_SIZE}", "pixel width", path),
        )
        center_m = _center(root, path)
        probe_member = f"{cxi.IMAGE}/{cxi.IMAGE_PROBE}"
        probe = _image_array(root, probe_member, "probe", path) if probe_member in root else None
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
