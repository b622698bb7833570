"""Probe scan paths: (N, 2) probe centres in metres, columns (y, x), centroid at the origin.

The Fermat spiral is what most ptychography beamlines run: points spread evenly with no
lattice periodicity (a raster's periodicity produces grid artefacts in reconstructions), and
each new point lands next to earlier ones, so any prefix of the scan is already well overlapped.
"""

from __future__ import annotations

import numpy as np

GOLDEN_ANGLE_RAD = np.pi * (3 - np.sqrt(5))


def fermat_spiral(n_points: int, step_m: float) -> np.ndarray:
    """``n_points`` on a golden-angle Fermat spiral as dense as a raster of pitch ``step_m``.

    r_k = c sqrt(k) holds one point per pi c^2 of area; c = step / sqrt(pi) gives one per step^2,
    so both paths give the same overlap (and dose) for the same step. Nearest neighbours are then
    about 0.96 step apart.
    """
    k = np.arange(n_points)
    radius = step_m / np.sqrt(np.pi) * np.sqrt(k)
    angle = k * GOLDEN_ANGLE_RAD
    return _centred(np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1))


def raster(n_points: int, step_m: float) -> np.ndarray:
    """``n_points`` row by row on a square grid of pitch ``step_m`` (the last row may be short)."""
    columns = int(np.ceil(np.sqrt(n_points)))
    row, column = np.divmod(np.arange(n_points), columns)
    return _centred(step_m * np.stack([row, column], axis=1).astype(np.float64))


def add_jitter(positions_m: np.ndarray, sigma_m: float, rng: np.random.Generator) -> np.ndarray:
    """Positions plus independent Gaussian errors of ``sigma_m`` per axis (stage imprecision)."""
    return positions_m + rng.normal(0.0, sigma_m, size=positions_m.shape)


def _centred(positions_m: np.ndarray) -> np.ndarray:
    return positions_m - positions_m.mean(axis=0)
