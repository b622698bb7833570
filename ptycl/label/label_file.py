"""A label file written from an iterative reconstruction: ptycl's object image group
(``io.object_image``: object, probe, pixel size, centre) plus how it was made.

``/entry_1/image_1/process_1`` (CXI's place for how an image was processed) holds the probe
positions used, ``probe_positions_m`` (N, 2) with axes (y, x), and as attributes the engine,
the epochs run, what stopped it, the final data error with its metric, the solver's seconds
and device, the initial probe's source and the referencing (``ptycl.label.conventions``).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ptycl.io import cxi
from ptycl.io.object_image import write_object_image
from ptycl.label.iterative import IterativeLabel
from ptycl.outputs import replacing

PROCESS = f"{cxi.IMAGE}/process_1"
POSITIONS = "probe_positions_m"
DATA_ERROR_METRIC = (
    "mean over pixels of (sqrt(model counts) - sqrt(measured counts))^2 (pty-chi MSE_SQRT)"
)


def write_iterative_label(path: Path, label: IterativeLabel) -> Path:
    """Write ``label`` to ``path`` all or nothing (a temporary file renamed into place)."""
    with replacing(Path(path)) as temporary:
        with h5py.File(temporary, "w", libver=("v110", "v110")) as f:
            write_object_image(f, label.image)
            process = f.create_group(PROCESS)
            positions = process.create_dataset(POSITIONS, data=label.positions_m)
            positions.attrs["axes"] = "y x"
            process.create_dataset("data_errors", data=np.asarray(label.data_errors))
            process.attrs.update(
                {
                    "source": "iterative reconstruction",
                    "engine": label.engine,
                    "iterations": label.iterations,
                    "stopped_by": label.stopped_by,
                    "final_data_error": label.final_data_error,
                    "data_error_metric": DATA_ERROR_METRIC,
                    "seconds": label.seconds,
                    "device": label.device,
                    "initial_probe": label.initial_probe,
                    "amplitude_reference": label.amplitude_reference,
                    "removed_phase_ramp_rad_per_px": json.dumps(
                        dict(zip(("y", "x"), label.removed_ramp_rad_per_px, strict=True))
                    ),
                    "phase_reference": "mean phase over the scanned area = 0",
                }
            )
    return Path(path)


def read_provenance(path: Path) -> dict[str, object]:
    """The attributes of a label's process group ({} for a label without one)."""
    with h5py.File(path, "r") as f:
        return dict(f[PROCESS].attrs.items()) if PROCESS in f else {}
