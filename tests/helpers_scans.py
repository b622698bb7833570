"""Test helpers: tiny synthetic scans, and a writer process for the streaming tests.

As a script it streams a scan whose frame ``i`` has every pixel equal to ``i + 1`` and whose
probe sits at ``pattern_position(i)``, so a reader in another process can tell a lost, zero
(not yet written) or mixed frame from a good one::

    python tests/helpers_scans.py write PATH --frames 40 --rate-hz 50 --size 16

or plays a beamline for the watch-mode tests (``beamline_scenario``): simulated scans written
in real time into a directory, labelled in three ways, then two broken ones::

    python tests/helpers_scans.py beamline DIR --frames 48 --rate-hz 60
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


# The scans ``beamline_scenario`` writes, and what the watcher must make of each.
BEAMLINE_SCANS = {
    "scan0000_manhattan.h5": "trained",  # label inside the scan: trained while it streams
    "scan0001_siemens.zarr": "trained",  # label in a separate file after the last frame
    "scan0002_particles.h5": "reconstructed",  # no label at all
    "scan0003_nan.h5": "quarantined",  # a NaN frame in the middle
    "scan0004_truncated.h5": "quarantined",  # a finished file cut short
}


def _stream(path: Path, scan: SimulatedScan, rate_hz: float, label: ObjectImage | None) -> None:
    with open_streaming_writer(path, scan.metadata, scan.frames.dtype, label=label) as writer:
        start = time.monotonic()
        for index in range(len(scan.frames)):
            writer.write_frame(scan.frames[index], scan.positions_m[index])
            time.sleep(max(0.0, start + (index + 1) / rate_hz - time.monotonic()))
        writer.mark_complete()


def beamline_scan(index: int, n_frames: int) -> SimulatedScan:
    """Scan ``index`` of the beamline scenario (its truth is the label a test may add later)."""
    from ptycl.config import SimulateSettings
    from ptycl.simulate.beamline import simulate_scan

    settings = SimulateSettings(
        families=["manhattan", "siemens", "particles", "texture"],
        frames_per_scan=n_frames,
        frame_size=64,
    )
    return simulate_scan(settings, index, np.random.default_rng([settings.seed, index]))


def beamline_scenario(
    directory: Path, n_frames: int = 48, rate_hz: float = 60.0, label_delay_s: float = 0.5
) -> None:
    """Write ``BEAMLINE_SCANS`` into ``directory`` one after the other, in real time."""
    import os
    from dataclasses import replace

    from ptycl.io.object_image import label_path_for, write_object_image
    from ptycl.io.source import write_scan

    def simulated(index: int) -> SimulatedScan:
        return beamline_scan(index, n_frames)

    names = list(BEAMLINE_SCANS)
    scan = simulated(0)
    _stream(directory / names[0], scan, rate_hz, label=scan.truth)
    scan = simulated(1)
    _stream(directory / names[1], scan, rate_hz, label=None)
    time.sleep(label_delay_s)  # the label comes later, as an iterative reconstruction would
    write_object_image(label_path_for(directory / names[1]), scan.truth)
    _stream(directory / names[2], simulated(2), rate_hz, label=None)
    # float frames with a NaN in frame 10: readable up to there, then refused
    scan = simulated(3)
    frames = scan.frames.astype(np.float32)
    frames[10, 5, 5] = np.nan
    bad = replace(scan, metadata=replace(scan.metadata, scan_id="scan0003_nan"), frames=frames)
    _stream(directory / names[3], bad, rate_hz, label=bad.truth)
    # a finished scan whose file lost its second half, renamed into place
    hidden = directory / f".{names[4]}.tmp"
    write_scan(hidden, simulated(4), format="hdf5")
    os.truncate(hidden, hidden.stat().st_size // 2)
    os.rename(hidden, directory / names[4])


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
    beamline = sub.add_parser("beamline", help="write the watch-mode scenario into a directory")
    beamline.add_argument("directory", type=Path)
    beamline.add_argument("--frames", type=int, default=48)
    beamline.add_argument("--rate-hz", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.command == "beamline":
        beamline_scenario(args.directory, args.frames, args.rate_hz)
        return 0
    stream_pattern_scan(
        args.path, args.frames, args.rate_hz, args.size, complete=not args.incomplete
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
