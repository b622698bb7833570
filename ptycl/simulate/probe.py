"""Illumination probes on the object-pixel grid, centred at pixel (size // 2, size // 2).

Design notes: docs/design.md.
"""

from __future__ import annotations

import numpy as np

from ptycl.config import ProbeKind


def make_probe(
    kind: ProbeKind, size_px: int, diameter_px: float, rng: np.random.Generator
) -> np.ndarray:
    """A (size_px, size_px) complex64 probe of about ``diameter_px`` across, unit power."""
    if not 1 < diameter_px < size_px:
        raise ValueError(
            f"probe diameter {diameter_px} px must lie between 1 and the window size {size_px} px"
        )
    if kind == "zone_plate":
        probe = _zone_plate(size_px, diameter_px, rng)
    elif kind == "aperture":
        probe = _aperture(size_px, diameter_px, rng)
    else:
        raise ValueError(f"unknown probe kind {kind!r}; known: zone_plate, aperture")
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def _zone_plate(size: int, diameter: float, rng: np.random.Generator) -> np.ndarray:
    # Split the diameter between the focal spot (Airy first-zero diameter 1.22 / f_max) and
    # geometric defocus blur so that their quadrature sum is the requested diameter.
    focus_fraction = rng.uniform(0.4, 0.6)
    f_max = 1.22 / (focus_fraction * diameter)
    defocus_blur = diameter * np.sqrt(1 - focus_fraction**2)
    lambda_z = defocus_blur / (2 * f_max) * rng.choice([-1.0, 1.0])  # either side of the focus
    f = _centred_radial_frequency(size)
    stop = rng.uniform(0.3, 0.45)  # central stop diameter / zone plate diameter
    pupil = ((f <= f_max) & (f >= stop * f_max)) * np.exp(-1j * np.pi * lambda_z * f**2)
    return _to_real_space(pupil)


def _aperture(size: int, diameter: float, rng: np.random.Generator) -> np.ndarray:
    # Fresnel number (D/2)^2 / (lambda z) of 4-12: near field, the disc keeps its size but grows
    # edge fringes, as behind a pinhole a few hundred microns upstream of the sample.
    fresnel_number = rng.uniform(4.0, 12.0)
    lambda_z = (diameter / 2) ** 2 / fresnel_number
    # Compute on a doubled window so light diffracted by the edge does not wrap around.
    padded = 2 * size
    yy, xx = np.indices((padded, padded)) - padded // 2
    # The disc's edge pixels are weighted by how much of them lies inside (anti-aliasing).
    disc = np.clip(diameter / 2 - np.hypot(yy, xx) + 0.5, 0.0, 1.0)
    spectrum = _to_fourier_space(disc) * np.exp(
        -1j * np.pi * lambda_z * _centred_radial_frequency(padded) ** 2
    )
    start = padded // 2 - size // 2
    return _to_real_space(spectrum)[start : start + size, start : start + size]


def _centred_radial_frequency(size: int) -> np.ndarray:
    """|f| in cycles per pixel with the zero frequency at index (size // 2, size // 2)."""
    f = np.fft.fftshift(np.fft.fftfreq(size))
    return np.hypot(f[:, None], f[None, :])


def _to_real_space(centred_spectrum: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(centred_spectrum)))


def _to_fourier_space(centred_image: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(centred_image)))
