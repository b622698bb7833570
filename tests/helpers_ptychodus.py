"""A scan and its reconstruction written by ptychodus 1.7's own writers.

The scene is set up on ptychodus's side, in its conventions: an object with a pixel size and a
centre away from the origin (at index (N - 1) / 2, as ptychodus centres images), probe
positions in metres that ptychodus's own ``ObjectGeometry`` maps to whole object pixels, and
frames computed from the object patches there. ``true_patches`` are those patches: ptycl
must find them again from the files alone.

ptychodus writes frames (``CXIDiffractionFileWriter``) and products (``CXIProductFileIO``,
``save_product``, ``NPZProductFileIO``) to separate files; its CXI readers also accept one
file holding both, which is what a beamline scan in the CXI layout is, so ``write_scene``
copies the detector group of its diffraction file into its CXI product file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from ptychodus.api.diffraction import (
    DiffractionDatasetLayoutNode,
    DiffractionMetadata,
    SimpleDiffractionArray,
    SimpleDiffractionDataset,
)
from ptychodus.api.geometry import ImageExtent, PixelGeometry
from ptychodus.api.io import save_product
from ptychodus.api.object import Object, ObjectCenter, ObjectGeometry
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
from ptychodus.plugins.cxi_file import CXIDiffractionFileWriter, CXIProductFileIO
from ptychodus.plugins.npz_product_file import NPZProductFileIO
from scipy.ndimage import gaussian_filter

from ptycl.io.records import EV_J, ScanGeometry

FRAME = 64
ENERGY_EV = 8800.0
DISTANCE_M = 2.0
DETECTOR_PIXEL_M = 75e-6


@dataclass(frozen=True)
class Scene:
    product: Product
    geometry: ObjectGeometry  # ptychodus's description of the object grid
    rows_px: np.ndarray  # (N,) the object pixel of each position, ptychodus's mapping
    cols_px: np.ndarray
    frames: np.ndarray  # (N, FRAME, FRAME) uint32

    @property
    def positions_yx_m(self) -> np.ndarray:
        points = self.product.probe_positions
        return np.stack([points.get_coordinates_y_m(), points.get_coordinates_x_m()], axis=1)

    @property
    def object_array(self) -> np.ndarray:
        return self.product.object_.get_array()[0]

    def true_patches(self) -> np.ndarray:
        """(N, FRAME, FRAME) object patches, pixel FRAME // 2 at each position."""
        half = FRAME // 2
        return np.stack(
            [
                self.object_array[r - half : r - half + FRAME, c - half : c - half + FRAME]
                for r, c in zip(self.rows_px, self.cols_px, strict=True)
            ]
        )


def object_pixel_m() -> float:
    geometry = ScanGeometry(ENERGY_EV * EV_J, DISTANCE_M, (DETECTOR_PIXEL_M,) * 2, (FRAME, FRAME))
    return geometry.object_pixel_m[0]


def make_scene(seed: int = 0, shape: tuple[int, int] = (151, 160), step_px: int = 9) -> Scene:
    """An asymmetric object (so a flip or swap shows) on a grid ptychodus centres at
    (N - 1) / 2 and (2.3, -1.1) um; a jittered raster of positions on whole object pixels."""
    rng = np.random.default_rng(seed)
    height, width = shape
    amplitude = 0.55 + 0.4 * gaussian_filter(rng.random(shape), 2.0) / 0.6
    phase = 2.0 * (gaussian_filter(rng.random(shape), 3.0) - 0.5) / 0.2
    ramp = np.linspace(0, 1, width)[None, :] * np.linspace(0.2, 1, height)[:, None]
    values = (np.clip(amplitude, 0.05, 1.0) * ramp * np.exp(1j * phase)).astype(np.complex64)
    pixel = object_pixel_m()
    geometry = ObjectGeometry(
        width_px=width,
        height_px=height,
        pixel_width_m=pixel,
        pixel_height_m=pixel,
        center_x_m=2.3e-6,
        center_y_m=-1.1e-6,
    )
    margin = FRAME // 2 + 3
    rows, cols = np.meshgrid(
        np.arange(margin, height - margin, step_px), np.arange(margin, width - margin, step_px)
    )
    rows = rows.ravel() + rng.integers(-2, 3, rows.size)
    cols = cols.ravel() + rng.integers(-2, 3, cols.size)
    x_m = geometry.center_x_m + pixel * (cols - (width - 1) / 2)
    y_m = geometry.center_y_m + pixel * (rows - (height - 1) / 2)
    positions = ProbePositionSequence(
        [
            ProbePosition(i, float(x), float(y))
            for i, (x, y) in enumerate(zip(x_m, y_m, strict=True))
        ]
    )
    # ptychodus's own mapping of its positions to object pixels: whole pixels by construction
    mapped_cols = geometry.map_probe_positions_to_object_x_px(positions)
    mapped_rows = geometry.map_probe_positions_to_object_y_px(positions)
    np.testing.assert_allclose(mapped_cols, cols, atol=1e-6)
    np.testing.assert_allclose(mapped_rows, rows, atol=1e-6)

    yy, xx = np.mgrid[:FRAME, :FRAME] - FRAME // 2
    probe = np.where(xx**2 + yy**2 < (FRAME / 5) ** 2, 1.0, 0.0)
    probe = gaussian_filter(probe, 1.0).astype(np.complex64)
    product = Product(
        metadata=ProductMetadata(
            name="ptychodus-scene",
            comments="",
            detector_distance_m=DISTANCE_M,
            photon_energy_eV=ENERGY_EV,
            probe_photon_count=0.0,
            exposure_time_s=0.0,
            mass_attenuation_m2_per_kg=0.0,
            tomography_angle_deg=0.0,
        ),
        probe_positions=positions,
        probes=ProbeSequence(probe, None, PixelGeometry(pixel, pixel)),
        object_=Object(values, PixelGeometry(pixel, pixel), ObjectCenter(2.3e-6, -1.1e-6)),
        losses=[],
    )
    scene = Scene(product, geometry, rows, cols, np.empty(0))
    waves = np.fft.fft2(np.fft.ifftshift(probe * scene.true_patches(), axes=(-2, -1)))
    intensity = np.fft.fftshift(np.abs(waves) ** 2, axes=(-2, -1))
    frames = rng.poisson(1e5 * intensity / intensity.sum(axis=(1, 2), keepdims=True))
    return Scene(product, geometry, rows, cols, frames.astype(np.uint32))


def write_diffraction(path: Path, scene: Scene) -> None:
    frames = scene.frames
    metadata = DiffractionMetadata(
        num_patterns_per_array=[len(frames)],
        pattern_dtype=frames.dtype,
        detector_extent=ImageExtent(FRAME, FRAME),
        detector_distance_m=DISTANCE_M,
        detector_pixel_geometry=PixelGeometry(DETECTOR_PIXEL_M, DETECTOR_PIXEL_M),
        photon_energy_eV=ENERGY_EV,
    )
    array = SimpleDiffractionArray("frames", np.arange(len(frames)), frames)
    dataset = SimpleDiffractionDataset(
        metadata, DiffractionDatasetLayoutNode.create_root(), [array]
    )
    CXIDiffractionFileWriter().write(path, dataset)


def write_scene(directory: Path, scene: Scene) -> dict[str, Path]:
    """The scan (ptychodus's CXI product with its diffraction data, one file) and the
    reconstruction in each of ptychodus's product formats."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "scan": directory / "scan0001.cxi",
        "diffraction": directory / "diffraction.cxi",
        "h5": directory / "product.h5",
        "cxi": directory / "product.cxi",
        "npz": directory / "product.npz",
    }
    write_diffraction(paths["diffraction"], scene)
    CXIProductFileIO().write(paths["scan"], scene.product)
    with h5py.File(paths["diffraction"], "r") as source, h5py.File(paths["scan"], "a") as scan:
        detector = scan["entry_1/instrument_1/detector_1"]
        for name in ("data", "x_pixel_size", "y_pixel_size"):
            source.copy(source[f"entry_1/instrument_1/detector_1/{name}"], detector, name)
        scan["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
    save_product(paths["h5"], scene.product)
    CXIProductFileIO().write(paths["cxi"], scene.product)
    NPZProductFileIO().write(paths["npz"], scene.product)
    return paths
