"""Synthetic sample objects, one family per domain, randomised per scan.

Design notes: docs/design.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

BLUR_SIGMA_PX = 0.6  # resolution of the "truth", see the module docstring
MAX_PHASE_RAD = 1.5

# Photographs that ship inside scikit-image (no download); colour ones are turned to grey.
TEXTURE_IMAGES = (
    "camera",
    "astronaut",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
)


def make_object(family: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (H, W) complex64 transmission function of the named family (see module docstring)."""
    try:
        build = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown sample family {family!r}; known: {sorted(FAMILIES)}") from None
    phase_shift, attenuation = build(shape, rng)
    phase_shift = ndimage.gaussian_filter(phase_shift, BLUR_SIGMA_PX)
    attenuation = ndimage.gaussian_filter(attenuation, BLUR_SIGMA_PX)
    return np.exp(-attenuation - 1j * phase_shift).astype(np.complex64)


def _manhattan(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2-3 metal layers of wires on a track pitch, alternating direction, vias where they cross."""
    n_layers = int(rng.integers(2, 4))
    first_horizontal = bool(rng.integers(2))
    delta_over_beta = rng.uniform(8.0, 15.0)
    via_phase = 0.3
    layer_phase_max = (MAX_PHASE_RAD - via_phase) / n_layers
    phase_shift = np.zeros(shape)
    vias = np.zeros(shape, dtype=bool)  # a mask, so vias of two layer pairs never stack
    previous: tuple[np.ndarray, np.ndarray, int, bool] | None = None
    for layer in range(n_layers):
        horizontal = first_horizontal ^ bool(layer % 2)
        pitch = int(rng.integers(6, 15))
        width = int(rng.integers(2, pitch // 2 + 1))
        metal, track_centres = _wire_layer(shape, horizontal, pitch, width, rng)
        phase_shift += rng.uniform(0.6, 1.0) * layer_phase_max * metal
        if previous is not None:
            vias |= _vias(previous, (metal, track_centres, width, horizontal), rng)
        previous = (metal, track_centres, width, horizontal)
    phase_shift += via_phase * vias
    return phase_shift, phase_shift / delta_over_beta


def _wire_layer(
    shape: tuple[int, int], horizontal: bool, pitch: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Metal mask of one layer and the centre coordinate of each track (rows if horizontal)."""
    # Build horizontal tracks on the transposed shape for vertical layers, then transpose back.
    rows, cols = shape if horizontal else shape[::-1]
    metal = np.zeros((rows, cols), dtype=bool)
    starts = np.arange(int(rng.integers(pitch)), rows - width + 1, pitch)
    mean_on, mean_off = rng.uniform(15, 60), rng.uniform(4, 20)
    for start in starts:
        metal[start : start + width] = _on_off_runs(cols, mean_on, mean_off, rng)
    centres = starts + width // 2
    return (metal if horizontal else metal.T), centres


def _on_off_runs(
    length: int, mean_on: float, mean_off: float, rng: np.random.Generator
) -> np.ndarray:
    """A 1-D wire track: alternating metal/gap runs of exponential length (>= 1 px)."""
    n_pairs = length // 2 + 1  # enough runs even if every run were 1 px long
    runs = (
        np.maximum(1, rng.exponential([mean_on, mean_off], size=(n_pairs, 2))).astype(int).ravel()
    )
    states = np.tile([True, False], n_pairs)
    if rng.integers(2):  # start inside a gap half of the time
        states = ~states
    return np.repeat(states, runs)[:length]


def _vias(
    lower: tuple[np.ndarray, np.ndarray, int, bool],
    upper: tuple[np.ndarray, np.ndarray, int, bool],
    rng: np.random.Generator,
) -> np.ndarray:
    """Square vias at a random third of the crossings where both layers carry metal."""
    (metal_a, centres_a, width_a, horizontal_a), (metal_b, centres_b, width_b, _) = lower, upper
    rows, cols = (centres_a, centres_b) if horizontal_a else (centres_b, centres_a)
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    chosen = metal_a[yy, xx] & metal_b[yy, xx] & (rng.random(yy.shape) < 1 / 3)
    seeds = np.zeros(metal_a.shape, dtype=bool)
    seeds[yy[chosen], xx[chosen]] = True
    size = min(width_a, width_b)
    return ndimage.binary_dilation(seeds, np.ones((size, size), dtype=bool))


def _particles(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dense nanoparticles (e.g. Pt) on light support grains (e.g. alumina), each a sphere."""
    support = _spheres(
        shape, mean_radius=rng.uniform(8, 20), coverage=rng.uniform(0.6, 1.2), rng=rng
    )
    metal = _spheres(
        shape, mean_radius=rng.uniform(1.5, 4), coverage=rng.uniform(0.1, 0.4), rng=rng
    )
    # delta per pixel of thickness for each material, and its delta/beta (heavier absorbs more).
    delta_support, delta_metal = 1.0, rng.uniform(4.0, 8.0)
    ratio_support, ratio_metal = rng.uniform(20, 40), rng.uniform(5, 12)
    phase_shift = delta_support * support + delta_metal * metal
    attenuation = delta_support / ratio_support * support + delta_metal / ratio_metal * metal
    # Scale the sample's thickness (both materials alike, so delta/beta stays consistent) so the
    # thickest point shifts the phase by ``MAX_PHASE_RAD`` times a random fraction.
    scale = rng.uniform(0.6, 1.0) * MAX_PHASE_RAD / max(phase_shift.max(), 1e-12)
    return scale * phase_shift, scale * attenuation


def _spheres(
    shape: tuple[int, int], mean_radius: float, coverage: float, rng: np.random.Generator
) -> np.ndarray:
    """Summed projected thickness 2 sqrt(r^2 - d^2) of randomly placed, log-normal spheres."""
    count = max(1, int(coverage * shape[0] * shape[1] / (np.pi * mean_radius**2)))
    radii = mean_radius * rng.lognormal(0.0, 0.3, count)
    centres = rng.uniform((0, 0), shape, size=(count, 2))
    thickness = np.zeros(shape)
    for (cy, cx), r in zip(centres, radii, strict=True):
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, shape[0])
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, shape[1])
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        thickness[y0:y1, x0:x1] += 2 * np.sqrt(np.maximum(r * r - d2, 0.0))
    return thickness


def _siemens(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A binary star covering the object, centred near the object's centre, with support rings."""
    spokes = int(rng.integers(8, 37))
    yy, xx = np.indices(shape, dtype=float)
    yy -= shape[0] // 2 + rng.uniform(-4, 4)
    xx -= shape[1] // 2 + rng.uniform(-4, 4)
    radius, angle = np.hypot(yy, xx), np.arctan2(yy, xx)
    material = np.cos(spokes * angle + rng.uniform(0, 2 * np.pi)) > 0
    # Spokes narrower than ~2 px cannot be resolved; real stars leave that centre open.
    material &= radius > 4 * spokes / (2 * np.pi)
    for ring_radius in rng.uniform(0.2, 1.0, int(rng.integers(0, 4))) * radius.max():
        material |= np.abs(radius - ring_radius) < 1.5
    phase_shift = rng.uniform(0.6, MAX_PHASE_RAD) * material
    return phase_shift, phase_shift / rng.uniform(4.0, 10.0)


def _texture(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Phase from a photograph (random scale, rotation, crop); amplitude from a 1/f field."""
    image = _photograph(str(rng.choice(TEXTURE_IMAGES)))
    scale = rng.uniform(0.5, 2.0)  # photograph pixels per object pixel
    theta = rng.uniform(0, 2 * np.pi)
    rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    yy, xx = np.indices(shape, dtype=float)
    centred = np.stack([yy.ravel() - shape[0] / 2, xx.ravel() - shape[1] / 2])
    origin = rng.uniform(0, image.shape)[:, None]
    # "mirror" tiles the photograph seamlessly when the object is larger than it.
    content = ndimage.map_coordinates(
        image, rotation @ centred + origin, order=1, mode="mirror"
    ).reshape(shape)
    content = (content - content.min()) / max(np.ptp(content), 1e-12)
    phase_shift = rng.uniform(0.8, MAX_PHASE_RAD) * content
    attenuation = rng.uniform(0.1, 0.7) * power_law_field(shape, rng.uniform(1.5, 2.5), rng)
    return phase_shift, attenuation


def _photograph(name: str) -> np.ndarray:
    import skimage.color
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3])
    return image.astype(float)


def power_law_field(
    shape: tuple[int, int], exponent: float, rng: np.random.Generator
) -> np.ndarray:
    """A random field in [0, 1] whose power spectrum falls as 1/|f|^exponent (natural: ~2)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf  # no mean: it is set by the normalisation below
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * f ** (-exponent / 2)).real
    return (field - field.min()) / max(np.ptp(field), 1e-12)


FAMILIES: dict[
    str, Callable[[tuple[int, int], np.random.Generator], tuple[np.ndarray, np.ndarray]]
] = {
    "manhattan": _manhattan,
    "particles": _particles,
    "siemens": _siemens,
    "texture": _texture,
}
