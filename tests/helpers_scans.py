"""Test helpers: tiny synthetic scans, and a writer process for the streaming tests.

As a script it streams a scan whose frame ``i`` has every pixel equal to ``i + 1`` and whose
probe sits at ``pattern_position(i)``, so a reader in another process can tell a lost, zero
(not yet written) or mixed frame from a good one::

    python tests/helpers_scans.py write PATH --frames 40 --rate-hz 50 --size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ptycl.io.records import EV_J, ObjectImage, ScanGeometry, ScanMetadata, SimulatedScan
from ptycl.io.source import open_streaming_writer


def tiny_metadata(
    frame_shape: tuple[int, int] = (16, 16),
    scan_id: str = "scan0000",
    family: str | None = "manhattan",
    masked: bool = True,
) -> ScanMetadata:
    mask = None
    if masked:
        mask = np.zeros(frame_shape, dtype=bool)
        mask[:, frame_shape[1] // 2] = True  # a module gap
    geometry = ScanGeometry(
        energy_j=8800 * EV_J,
        distance_m=2.0,
        detector_pixel_m=(75e-6, 55e-6),
        frame_shape=frame_shape,
    )
    return ScanMetadata(
        scan_id=scan_id,
        geometry=geometry,
        sample_family=family,
        mask=mask,
        attrs={"beamline": "test"},
    )


def tiny_scan(
    n_frames: int = 12,
    frame_shape: tuple[int, int] = (16, 16),
    seed: int = 0,
    dtype: str = "uint32",
    scan_id: str = "scan0000",
) -> SimulatedScan:
    """Random counts, positions and object: bit-exact round trips need nothing physical."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 5000, size=(n_frames, *frame_shape)).astype(dtype)
    positions_m = rng.uniform(-2e-6, 2e-6, size=(n_frames, 2))
    truth = ObjectImage(
        values=(rng.random((24, 20)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (24, 20)))).astype(
            np.complex64
        ),
        pixel_m=(1.1e-8, 1.3e-8),
        center_m=(2e-7, -3e-7),
    )
    probe = np.ones(frame_shape, dtype=np.complex64)
    return SimulatedScan(tiny_metadata(frame_shape, scan_id), frames, positions_m, truth, probe)


FOREIGN_MEMBERS = {
    "distance": "entry_1/instrument_1/detector_1/distance",
    "x_pixel_size": "entry_1/instrument_1/detector_1/x_pixel_size",
    "y_pixel_size": "entry_1/instrument_1/detector_1/y_pixel_size",
    "energy": "entry_1/instrument_1/source_1/energy",
}


def write_foreign_cxi(
    path: Path,
    frames: np.ndarray,
    translation_xyz: np.ndarray,
    omit: tuple[str, ...] = (),
    **scalars: float,
) -> None:
    """A CXI file as another tool writes it, with plain h5py and none of ptycl's extras:
    frames stored in /entry_1/data_1/data (no soft link, no status, no mask), scalars as (1,)
    arrays. ``omit`` leaves out members by their FOREIGN_MEMBERS name."""
    import h5py

    values = {
        "distance": 1.5,
        "x_pixel_size": 172e-6,
        "y_pixel_size": 172e-6,
        "energy": 1.2e-15,
        **scalars,
    }
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
        f["entry_1/data_1/data"] = frames
        f["entry_1/sample_1/geometry_1/translation"] = translation_xyz
        for name, member in FOREIGN_MEMBERS.items():
            if name not in omit:
                f[member] = np.array([values[name]])


def pattern_frame(index: int, frame_shape: tuple[int, int]) -> np.ndarray:
    return np.full(frame_shape, index + 1, dtype=np.uint32)


def pattern_position(index: int) -> np.ndarray:
    return np.array([index * 1e-7, -index * 2e-7])


def stream_pattern_scan(
    path: Path, n_frames: int, rate_hz: float, size: int, complete: bool = True
) -> None:
    metadata = tiny_metadata((size, size), scan_id=path.stem)
    with open_streaming_writer(path, metadata, np.uint32) as writer:
        start = time.monotonic()
        for index in range(n_frames):
            writer.write_frame(pattern_frame(index, (size, size)), pattern_position(index))
            time.sleep(max(0.0, start + (index + 1) / rate_hz - time.monotonic()))
        if complete:
            writer.mark_complete()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="stream a pattern scan")
    write.add_argument("path", type=Path)
    write.add_argument("--frames", type=int, default=40)
    write.add_argument("--rate-hz", type=float, default=50.0)
    write.add_argument("--size", type=int, default=16)
    write.add_argument(
        "--incomplete", action="store_true", help="stop without marking the scan complete"
    )
    args = parser.parse_args(argv)
    stream_pattern_scan(
        args.path, args.frames, args.rate_hz, args.size, complete=not args.incomplete
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
