"""Labels from an iterative reconstruction of each scan: pty-chi's LSQML solver in the loop.

At a beamline no truth exists: a model is trained on iterative reconstructions of the scans
(PtychoNN's own recipe). ``reconstruct`` runs pty-chi (``pip install -e '.[iterative]'``) on a
scan's frames at its positions, refining object and probe, for at most ``label.iterations``
epochs or ``label.time_budget_s`` seconds, on the CPU or the training GPU; the result is
referenced as ``ptycl.label.conventions`` says and returned with how it was made.

Geometry: pty-chi takes positions in pixels about an origin it is told
(``position_origin_coords``, the object pixel where position 0 sits) and puts a patch's centre
at (n - 1) / 2 within it. The origin is set so that a probe position lands where ptycl's
``prep.patches.cut_patches`` puts it: the patch's pixel (n // 2) on the position, the object's
centre pixel (H // 2) at ``center_m``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptycl.config import LabelSettings
from ptycl.errors import PtyclError
from ptycl.io.records import ObjectImage, ScanMetadata
from ptycl.label.conventions import reference_label

log = logging.getLogger("ptycl.label")

ENGINE = "pty-chi LSQML"
OBJECT_MARGIN_PX = 8  # object beyond the outermost patch
# Attributes of a scan's metadata that tell the initial probe and the incident flux
# (ptycl's simulator writes them).
PROBE_DIAMETER_ATTR = "probe_diameter_px"
INCIDENT_PHOTONS_ATTR = "photons_per_frame"


class IterativeSolverMissing(PtyclError):
    """pty-chi is not installed."""


@dataclass(frozen=True)
class IterativeLabel:
    """A referenced reconstruction of one scan and how it was made."""

    image: ObjectImage  # object and probe on the scan's object-pixel grid, referenced
    positions_m: np.ndarray  # (N, 2) (y, x) probe positions used, metres
    engine: str
    iterations: int  # epochs run
    stopped_by: str  # "iterations" or "time budget"
    data_errors: tuple[float, ...]  # per epoch: pty-chi's MSE of sqrt(intensity), counts
    seconds: float  # solver wall time
    device: str
    initial_probe: str  # where the initial probe came from
    amplitude_reference: str
    removed_ramp_rad_per_px: tuple[float, float]

    @property
    def final_data_error(self) -> float:
        return self.data_errors[-1]


def initial_probe(
    metadata: ScanMetadata, settings: LabelSettings, supplied: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """(H, W) complex64 initial probe and where it came from: ``supplied`` (a probe file),
    else a disc of the diameter the scan's metadata states, else of ``label.probe_diameter_px``.

    Raises ValueError when none of them gives one."""
    shape = metadata.geometry.frame_shape
    if supplied is not None:
        if supplied.shape != shape:
            raise ValueError(f"the supplied probe is {supplied.shape}, the frames are {shape}")
        return supplied.astype(np.complex64), "supplied"
    diameter, source = settings.probe_diameter_px, "label.probe_diameter_px"
    stated = metadata.attrs.get(PROBE_DIAMETER_ATTR)
    if stated is not None:
        try:
            diameter, source = float(stated), f"the scan's {PROBE_DIAMETER_ATTR}"
        except ValueError:
            raise ValueError(f"{PROBE_DIAMETER_ATTR} is {stated!r}, not a number") from None
    if diameter is None:
        raise ValueError(
            "no initial probe: give --probe FILE, or label.probe_diameter_px for a disc "
            f"(the scan's metadata has no {PROBE_DIAMETER_ATTR})"
        )
    rows, cols = np.indices(shape)
    radius = np.hypot(rows - shape[0] // 2, cols - shape[1] // 2)
    disc = np.clip(diameter / 2 - radius + 0.5, 0.0, 1.0)  # edge pixels by their covered part
    return disc.astype(np.complex64), f"a disc of {diameter:g} px ({source})"


def incident_photons(metadata: ScanMetadata, settings: LabelSettings) -> float | None:
    if settings.incident_photons_per_frame is not None:
        return settings.incident_photons_per_frame
    stated = metadata.attrs.get(INCIDENT_PHOTONS_ATTR)
    try:
        value = float(stated) if stated is not None else None
    except ValueError:
        return None
    return value if value is not None and np.isfinite(value) and value > 0 else None


def _ptychi() -> tuple[Any, Any]:
    """pty-chi's options API and its task class, imported only when a label is made."""
    try:
        import ptychi.api as api
        from ptychi.api.task import PtychographyTask
    except ImportError:
        raise IterativeSolverMissing(
            "the iterative solver needs pty-chi: pip install -e '.[iterative]'"
        ) from None
    return api, PtychographyTask


def _device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass(frozen=True)
class _Grid:
    """The object array pty-chi reconstructs into, and the positions on it."""

    shape: tuple[int, int]
    center_m: tuple[float, float]  # (y, x) of pixel (H // 2, W // 2)
    positions_px: np.ndarray  # (N, 2) (y, x) pixels about ``center_m``
    origin: tuple[float, float]  # pty-chi's position_origin_coords

    @classmethod
    def covering(
        cls, positions_m: np.ndarray, pixel_m: tuple[float, float], frame: tuple[int, int]
    ) -> _Grid:
        center_m = (positions_m.max(axis=0) + positions_m.min(axis=0)) / 2
        positions_px = (positions_m - center_m) / np.asarray(pixel_m)
        extent = [int(np.ceil(np.ptp(positions_px[:, a]))) for a in (0, 1)]
        shape = tuple(
            n + 2 * OBJECT_MARGIN_PX + f + (n + f) % 2 for n, f in zip(extent, frame, strict=True)
        )
        origin = tuple(shape[a] // 2 - frame[a] // 2 + (frame[a] - 1) / 2 for a in (0, 1))
        return cls(shape, (float(center_m[0]), float(center_m[1])), positions_px, origin)


def _options(api: Any, metadata: ScanMetadata, settings: LabelSettings, grid: _Grid, n: int) -> Any:
    """pty-chi's LSQML options: object and (optionally) probe refined, positions fixed."""
    pixel_m = metadata.geometry.object_pixel_m
    options = api.LSQMLOptions()
    options.data_options.wavelength_m = metadata.geometry.wavelength_m
    options.object_options.pixel_size_m = pixel_m[1]
    options.object_options.pixel_size_aspect_ratio = pixel_m[1] / pixel_m[0]
    options.object_options.determine_position_origin_coords_by = (
        api.ObjectPosOriginCoordsMethods.SPECIFIED
    )
    options.object_options.position_origin_coords = np.asarray(grid.origin)
    options.probe_options.optimizable = settings.refine_probe
    options.probe_position_options.optimizable = False
    options.reconstructor_options.num_epochs = settings.iterations
    options.reconstructor_options.batch_size = min(settings.batch_size, n)
    options.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    options.reconstructor_options.random_seed = settings.seed
    options.reconstructor_options.default_device = (
        api.Devices.GPU if _device(settings.device) == "cuda" else api.Devices.CPU
    )
    return options


def _run_epochs(
    task: Any, settings: LabelSettings, on_epoch: Callable[[int, float], None] | None
) -> tuple[list[float], str, float]:
    """Epochs until the iteration or the time budget is spent: (data error per epoch, what
    stopped it, seconds)."""
    errors: list[float] = []
    started = time.perf_counter()
    for epoch in range(settings.iterations):
        task.run(n_epochs=1)
        errors.append(float(task.reconstructor.loss_tracker.table["loss"].iloc[-1]))
        if on_epoch is not None:
            on_epoch(epoch, errors[-1])
        budget = settings.time_budget_s
        if budget is not None and time.perf_counter() - started >= budget:
            if epoch + 1 < settings.iterations:
                return errors, "time budget", time.perf_counter() - started
            break
    return errors, "iterations", time.perf_counter() - started


def reconstruct(
    frames: np.ndarray,
    positions_m: np.ndarray,
    metadata: ScanMetadata,
    settings: LabelSettings,
    probe: np.ndarray | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> IterativeLabel:
    """Reconstruct one scan from its (N, H, W) frames (detector counts) at its (N, 2) probe
    positions (y, x metres). ``probe``: a supplied initial probe; ``on_epoch(epoch,
    data_error)`` is called after each epoch (a progress bar)."""
    api, task_class = _ptychi()
    size = metadata.geometry.frame_shape
    if frames.ndim != 3 or frames.shape[1:] != size or len(frames) != len(positions_m):
        raise ValueError(f"{frames.shape} frames for {len(positions_m)} positions of {size} px")
    probe0, probe_source = initial_probe(metadata, settings, probe)
    grid = _Grid.covering(positions_m, metadata.geometry.object_pixel_m, size)
    # pty-chi sets torch's default device and dtype for the whole process; a training loop
    # sharing the process must get its own back.
    default_device, default_dtype = torch.get_default_device(), torch.get_default_dtype()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pty-chi's deprecation and tensor-copy notes
            task = task_class(
                _options(api, metadata, settings, grid, len(frames)),
                diffraction_data=np.asarray(frames, dtype=np.float32),
                object_data=np.ones((1, *grid.shape), dtype=np.complex64),
                probe_data=probe0[None, None],
                probe_position_x_px=grid.positions_px[:, 1],
                probe_position_y_px=grid.positions_px[:, 0],
                valid_pixel_mask=None if metadata.mask is None else ~metadata.mask,
            )
            errors, stopped_by, seconds = _run_epochs(task, settings, on_epoch)
            obj = task.get_data_to_cpu("object", as_numpy=True)[0]
            probe_out = task.get_data_to_cpu("probe", as_numpy=True)[0, 0]
    finally:
        torch.set_default_device(default_device)
        torch.set_default_dtype(default_dtype)

    raw = ObjectImage(
        values=obj.astype(np.complex64),
        pixel_m=metadata.geometry.object_pixel_m,
        center_m=grid.center_m,
        probe=probe_out.astype(np.complex64),
    )
    referenced = reference_label(raw, positions_m, incident_photons(metadata, settings))
    return IterativeLabel(
        image=referenced.image,
        positions_m=np.asarray(positions_m, dtype=np.float64),
        engine=ENGINE,
        iterations=len(errors),
        stopped_by=stopped_by,
        data_errors=tuple(errors),
        seconds=seconds,
        device=_device(settings.device),
        initial_probe=probe_source,
        amplitude_reference=referenced.amplitude_reference,
        removed_ramp_rad_per_px=referenced.removed_ramp_rad_per_px,
    )
