"""Reconstructions on disk: a CXI file (or a Zarr group with the same tree) and a PNG.

The file follows the CXI product layout that ptychodus 1.7 reads and writes
(``io.ptychodus_product``): the complex object in ``/entry_1/image_2`` with its pixel size and
centre, the probe in ``/entry_1/image_1``, the probe positions as the translation (marked
``probe``, as ptychodus means it), the energy and detector geometry; in HDF5 ptychodus's own
product layout shares the same arrays, so either of its readers opens the file. ptycl's
``covered`` mask and stitching ``weight`` sit beside the object. Written aside and renamed
into place, so a reader never sees half a reconstruction.

The model does not reconstruct a probe: the file carries the label's probe where the scan's
label has one on the object's grid, else the model's illuminated support as a stand-in
(marked so in the probe's ``ptycl_probe`` attribute).
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
from ptycl.io.object_image import put_array
from ptycl.io.ptychodus_product import ProductContents, write_product
from ptycl.outputs import replacing
from ptycl.recon.infer import ScanPrediction
from ptycl.recon.stitch import StitchedObject

ReconFormat = Literal["hdf5", "zarr"]


def _probe(prediction: ScanPrediction, stitched: StitchedObject) -> tuple[np.ndarray, str]:
    """The probe to write beside the object, and what it is."""
    truth = prediction.truth
    if truth is not None and truth.probe is not None and truth.pixel_m == stitched.image.pixel_m:
        return truth.probe, "the label's probe"
    shape = prediction.amplitude.shape[1:]
    support = np.ones(shape) if prediction.support is None else prediction.support
    return support.astype(np.complex64), "stand-in: the model's illuminated support"


def _fill(
    root: h5py.Group | zarr.Group, prediction: ScanPrediction, stitched: StitchedObject, source: str
) -> None:
    geometry = prediction.metadata.geometry
    probe, probe_kind = _probe(prediction, stitched)
    write_product(
        root,
        ProductContents(
            image=stitched.image,
            probe=probe,
            positions_m=prediction.positions_m,
            energy_j=geometry.energy_j,
            distance_m=geometry.distance_m,
            name=prediction.metadata.scan_id,
        ),
    )
    root[f"{cxi.IMAGE}/{cxi.IMAGE_DATA}"].attrs["ptycl_probe"] = probe_kind
    image = root[cxi.PRODUCT_OBJECT]
    put_array(image, "covered", stitched.covered.astype(np.uint8))
    put_array(image, "weight", stitched.weight.astype(np.float32))
    put_array(root, cxi.Y_PIXEL_SIZE, np.float64(geometry.detector_pixel_m[0]))
    put_array(root, cxi.X_PIXEL_SIZE, np.float64(geometry.detector_pixel_m[1]))
    put_array(root, cxi.CXI_VERSION_PATH, np.int64(cxi.CXI_VERSION))
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
