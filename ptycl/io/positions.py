"""What a file's ``translation`` means: the probe position, or the sample translation.

CXI 1.6 stores ``/entry_1/sample_1/geometry_1/translation`` (N, 3) with columns (x, y, z) and
calls it the sample's translation; moving the sample by +t puts the probe at -t on it, so a
reader negates it (CDTools writes and reads it that way). ptychodus 1.7 writes and reads the
same dataset as the probe position itself. Nothing in the numbers tells the two apart, so the
reader works out which from the file's writer, or is told, and always says which and why.

ptycl's own writers mark the dataset with ``CONVENTION_ATTR``; a file carrying it needs no
guess. ptycl positions are probe centres, (N, 2) with columns (y, x), in metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Convention = Literal["probe", "sample"]
ConventionSetting = Literal["auto", "probe", "sample"]
CONVENTION_SETTINGS: tuple[ConventionSetting, ...] = ("auto", "probe", "sample")
# Attribute of the translation dataset: "probe" (translation = probe position) or "sample"
# (translation = sample translation = minus the probe position).
CONVENTION_ATTR = "ptycl_position_convention"
CONVENTIONS: tuple[Convention, ...] = ("probe", "sample")


@dataclass(frozen=True)
class PositionConvention:
    """How one file's translations become probe positions, and why ptycl believes so."""

    kind: Convention
    reason: str  # e.g. "written by ptychodus, which stores probe positions"

    @property
    def sign(self) -> float:
        """Probe position = sign * translation."""
        return 1.0 if self.kind == "probe" else -1.0

    def positions_from_translation(self, translation_m: np.ndarray) -> np.ndarray:
        """(N, >=2) translation (x, y[, z]) -> (N, 2) probe positions (y, x)."""
        translation_m = np.asarray(translation_m, dtype=np.float64)
        return self.sign * np.stack([translation_m[:, 1], translation_m[:, 0]], axis=1)

    def translation_from_positions(self, positions_m: np.ndarray) -> np.ndarray:
        """(N, 2) probe positions (y, x) -> (N, 3) translation (x, y, z)."""
        positions_m = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
        translation = np.zeros((len(positions_m), 3), dtype=np.float64)
        translation[:, 0] = self.sign * positions_m[:, 1]
        translation[:, 1] = self.sign * positions_m[:, 0]
        return translation

    def describe(self) -> str:
        what = "probe position" if self.kind == "probe" else "sample translation (-probe)"
        return f"translation read as the {what}: {self.reason}"


# What ptycl writes into its own scans: the CXI spec's meaning.
PTYCL_SCANS = PositionConvention("sample", "written by ptycl")
# What ptycl writes into reconstructions: ptychodus's meaning, so that ptychodus reads them.
PTYCL_RECONSTRUCTIONS = PositionConvention("probe", "written by ptycl for ptychodus")


def choose_convention(
    setting: ConventionSetting, found: PositionConvention | None
) -> PositionConvention:
    """The convention to use: the setting when it names one, else what the file's writer
    says (``found``), else CXI's own meaning, saying that it was assumed."""
    if setting != "auto":
        note = "" if found is None else f"; the file suggests {found.kind} ({found.reason})"
        return PositionConvention(setting, f"set by position_convention={setting}{note}")
    if found is not None:
        return found
    return PositionConvention(
        "sample",
        "no writer mark in the file, CXI 1.6's sample translation assumed (as CDTools writes "
        "it); set position_convention=probe if the writer stored probe positions",
    )


def positions_extent_m(positions_m: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """((y_min, y_max), (x_min, x_max)) of (N, 2) positions."""
    low, high = positions_m.min(axis=0), positions_m.max(axis=0)
    return (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))
