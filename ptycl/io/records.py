"""Typed records that travel between the stages of the data flow.

Conventions (README.md, "Conventions"):
- positions are probe centres in metres relative to the object's centre, stored as (N, 2)
  arrays with columns (y, x);
- images are indexed [row, column] = [y, x]; pixel sizes are (y, x) tuples in metres;
- model outputs are named (``ModelOutput.amplitude``, ``.phase``); stacked, as labels and
  predictions are, the channels are (amplitude, phase).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PLANCK_J_S = 6.62607015e-34
LIGHT_SPEED_M_S = 299_792_458.0
EV_J = 1.602176634e-19


def wavelength_m_from_energy_j(energy_j: float) -> float:
    return PLANCK_J_S * LIGHT_SPEED_M_S / energy_j


@dataclass(frozen=True)
class ScanGeometry:
    """Far-field geometry of one scan (what the CXI file's instrument group says)."""

    energy_j: float
    distance_m: float
    detector_pixel_m: tuple[float, float]  # (y, x)
    frame_shape: tuple[int, int]  # (H, W) detector pixels as stored

    @property
    def wavelength_m(self) -> float:
        return wavelength_m_from_energy_j(self.energy_j)

    @property
    def object_pixel_m(self) -> tuple[float, float]:
        """Real-space pixel of the far-field geometry: lambda * z / (N * detector pixel)."""
        lz = self.wavelength_m * self.distance_m
        return (
            lz / (self.frame_shape[0] * self.detector_pixel_m[0]),
            lz / (self.frame_shape[1] * self.detector_pixel_m[1]),
        )


@dataclass(frozen=True)
class ObjectImage:
    """A complex object image (a label, a ground truth or a reconstruction).

    ``center_m`` is the (y, x) position, in the scan's coordinate frame, of the image's centre
    pixel (index (H // 2, W // 2)); probe positions are in the same frame.

    ``probe`` is the illumination that goes with the image, on the same pixel grid, centred:
    an iterative reconstruction returns it beside the object, the simulator knows it. It
    tells which part of a patch a diffraction frame can say anything about (the model learns
    and is scored on the illuminated disc, see ``prep.patches.illuminated_support``).
    """

    values: np.ndarray  # (H, W) complex64
    pixel_m: tuple[float, float]  # (y, x)
    center_m: tuple[float, float] = (0.0, 0.0)  # (y, x)
    probe: np.ndarray | None = None  # (h, w) complex64 on the image's pixel grid

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or not np.iscomplexobj(self.values):
            raise ValueError(
                f"ObjectImage needs a 2-D complex array, got {self.values.dtype}{self.values.shape}"
            )

    @property
    def amplitude(self) -> np.ndarray:
        return np.abs(self.values)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.values)

    def pixel_coordinates(self, positions_m: np.ndarray) -> np.ndarray:
        """Map (N, 2) (y, x) positions in metres to fractional (row, column) pixel indices."""
        h, w = self.values.shape
        centre_px = np.array([h // 2, w // 2], dtype=np.float64)
        return centre_px + (positions_m - np.asarray(self.center_m)) / np.asarray(self.pixel_m)


@dataclass(frozen=True)
class FrameBatch:
    """Consecutive-or-not frames of one scan, with where the probe was for each."""

    scan_id: str
    indices: np.ndarray  # (n,) int64 frame indices within the scan
    frames: np.ndarray  # (n, H, W) raw detector counts (or float32 once prepared)
    positions_m: np.ndarray  # (n, 2) float64, columns (y, x)

    def __post_init__(self) -> None:
        n = len(self.indices)
        if self.frames.shape[0] != n or self.positions_m.shape != (n, 2):
            raise ValueError(
                f"FrameBatch of scan {self.scan_id}: {n} indices, frames {self.frames.shape}, "
                f"positions {self.positions_m.shape}"
            )

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class ScanMetadata:
    """What is known about a scan before any frame is read."""

    scan_id: str
    geometry: ScanGeometry
    sample_family: str | None = None  # e.g. "manhattan"; None for foreign files
    mask: np.ndarray | None = None  # (H, W) bool, True = bad pixel
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SimulatedScan:
    """Everything the simulated beamline produces for one scan, before it is written."""

    metadata: ScanMetadata
    frames: np.ndarray  # (N, H, W) detector counts, integer dtype
    positions_m: np.ndarray  # (N, 2) (y, x) probe centres, metres
    truth: ObjectImage  # the ground-truth object (the label)
    probe: np.ndarray  # (H, W) complex64, in object pixels
