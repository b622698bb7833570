"""Object images (labels, reconstructions) on disk: the CXI image group ``/entry_1/image_1``.

``data`` is the complex64 image [y, x]; ``x_pixel_size`` and ``y_pixel_size`` are metres;
``center_m`` is the (y, x) position in metres of the centre pixel (H // 2, W // 2) in the scan's
coordinate frame. The group sits inside a scan file (HDF5 or Zarr) or alone in a label file
``<scan stem>.label.h5`` beside the scan, which may arrive after the scan's last frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import zarr
from zarr.storage import LocalStore

from ptycl.errors import ScanError
from ptycl.io import cxi
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
        group.create_array(name, data=np.asarray(data), compressors=None)


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
        if image.probe is not None:
            _put(group, cxi.IMAGE_PROBE, image.probe.astype(np.complex64))
        return
    path = Path(target)
    partial = path.with_name(f".{path.name}.partial")
    with h5py.File(partial, "w", libver=("v110", "v110")) as f:
        write_object_image(f, image)
    os.replace(partial, path)


def has_object_image(root: Group) -> bool:
    return cxi.IMAGE in root and cxi.IMAGE_DATA in root[cxi.IMAGE]


def read_object_image_from(root: Group, path: str | Path) -> ObjectImage:
    """The image group of an open file; ``path`` names the file in errors."""
    try:
        group = root[cxi.IMAGE]
        values = np.asarray(group[cxi.IMAGE_DATA][...])
        pixel_m = (
            float(group[cxi.IMAGE_Y_PIXEL_SIZE][()]),
            float(group[cxi.IMAGE_X_PIXEL_SIZE][()]),
        )
        center_m = (0.0, 0.0)
        if cxi.IMAGE_CENTER in group:
            y, x = np.asarray(group[cxi.IMAGE_CENTER][...], dtype=np.float64)
            center_m = (float(y), float(x))
        probe = np.asarray(group[cxi.IMAGE_PROBE][...]) if cxi.IMAGE_PROBE in group else None
    except KeyError as exc:
        raise ScanError(path, f"object image: missing {cxi.IMAGE}/{exc.args[0]}") from None
    except (OSError, ValueError) as exc:
        raise ScanError(path, f"object image unreadable ({exc})") from None
    if values.ndim != 2 or not np.iscomplexobj(values):
        raise ScanError(
            path, f"object image must be 2-D complex, found {values.dtype}{values.shape}"
        )
    if probe is not None and (probe.ndim != 2 or not np.iscomplexobj(probe)):
        raise ScanError(path, f"probe must be 2-D complex, found {probe.dtype}{probe.shape}")
    return ObjectImage(
        values=values.astype(np.complex64, copy=False),
        pixel_m=pixel_m,
        center_m=center_m,
        probe=None if probe is None else probe.astype(np.complex64, copy=False),
    )


def read_object_image(path: str | Path) -> ObjectImage:
    """The object image of a label file, a reconstruction or a scan (HDF5 file or Zarr group)."""
    path = Path(path)
    if path.is_dir():
        try:
            root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
            raise ScanError(path, "not a Zarr group") from None
        if not has_object_image(root):
            raise ScanError(path, f"no object image ({cxi.IMAGE}/{cxi.IMAGE_DATA})")
        return read_object_image_from(root, path)
    f = cxi.open_hdf5(path)
    with f:
        if not has_object_image(f):
            raise ScanError(path, f"no object image ({cxi.IMAGE}/{cxi.IMAGE_DATA})")
        return read_object_image_from(f, path)
