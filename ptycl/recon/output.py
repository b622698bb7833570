"""Reconstructions on disk: a CXI file (or a Zarr group with the same tree) and a PNG.

The file holds what ptychography readers look for in a CXI reconstruction: the complex object
in ``/entry_1/image_1/data`` with ``x_pixel_size``/``y_pixel_size`` (and ptycl's ``center_m``),
the probe positions as ``/entry_1/sample_1/geometry_1/translation``, the energy, detector
distance and pixel sizes, plus ptycl's ``covered`` mask and stitching ``weight`` beside the
image. Written aside and renamed into place, so a reader never sees half a reconstruction.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import zarr

from ptycl import __version__
from ptycl.errors import OutputError
from ptycl.io import cxi
from ptycl.io.object_image import write_object_image
from ptycl.outputs import replacing
from ptycl.recon.infer import ScanPrediction
from ptycl.recon.stitch import StitchedObject

ReconFormat = Literal["hdf5", "zarr"]


def _put(group: h5py.Group | zarr.Group, name: str, data: np.ndarray) -> None:
    if isinstance(group, h5py.Group):
        group.create_dataset(name, data=data)
    else:
        group.create_array(name, data=np.asarray(data), compressors=None)


def _fill(
    root: h5py.Group | zarr.Group, prediction: ScanPrediction, stitched: StitchedObject, source: str
) -> None:
    geometry = prediction.metadata.geometry
    write_object_image(root, stitched.image)
    image = root[cxi.IMAGE]
    _put(image, "covered", stitched.covered.astype(np.uint8))
    _put(image, "weight", stitched.weight.astype(np.float32))
    _put(root, cxi.TRANSLATION, cxi.translation_from_positions(prediction.positions_m))
    _put(root, cxi.ENERGY, np.float64(geometry.energy_j))
    _put(root, cxi.DISTANCE, np.float64(geometry.distance_m))
    _put(root, cxi.Y_PIXEL_SIZE, np.float64(geometry.detector_pixel_m[0]))
    _put(root, cxi.X_PIXEL_SIZE, np.float64(geometry.detector_pixel_m[1]))
    _put(root, cxi.CXI_VERSION_PATH, np.int64(cxi.CXI_VERSION))
    root[cxi.ENTRY].attrs.update(
        {
            "program": "ptycl",
            "program_version": __version__,
            "scan_id": prediction.metadata.scan_id,
            "model": source,
        }
    )


def write_reconstruction(
    path: Path,
    prediction: ScanPrediction,
    stitched: StitchedObject,
    fmt: ReconFormat = "hdf5",
    source: str = "",
) -> Path:
    if fmt == "hdf5":
        with replacing(path) as partial, h5py.File(partial, "w", libver=("v110", "v110")) as f:
            _fill(f, prediction, stitched, source)
        return path
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _fill(zarr.open_group(partial, mode="w", zarr_format=3), prediction, stitched, source)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(partial, path)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)  # no half-written group left behind
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from None
    return path
