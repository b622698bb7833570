"""`ptycl label SCAN` without --from: labels from pty-chi's LSQML, on small simulated scans.

Criteria, declared before running: the label's phase error against the truth on the
illuminated area (offset-free) is at most half the constant object's, and its amplitude error
below the constant's; the label covers every probe position on the scan's object-pixel grid;
a referenced label has no phase ramp left and zero mean phase over the scanned area.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("ptychi")

from ptycl.cli import main as ptycl_main
from ptycl.config import LabelSettings, SimulateSettings
from ptycl.eval.label_errors import label_errors
from ptycl.io.object_image import read_object_image
from ptycl.io.records import ObjectImage, ScanMetadata
from ptycl.io.source import open_scan
from ptycl.label.conventions import illuminated_area, phase_ramp, reference_label
from ptycl.label.iterative import initial_probe
from ptycl.label.label_file import POSITIONS, PROCESS
from ptycl.simulate.run import simulate_scans

ITERATIONS = 60


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small Siemens-star scan (32² frames, 150 positions) and the label `ptycl label`
    wrote for it (CPU, 60 epochs)."""
    root = tmp_path_factory.mktemp("label")
    settings = SimulateSettings(
        out_dir=root / "scans",
        families=["siemens"],
        n_scans=1,
        frame_size=32,
        frames_per_scan=150,
        probe_diameter_px=10.0,
        labels="separate",
    )
    (scan,) = simulate_scans(settings)
    truth = scan.with_name(scan.stem + ".label.h5")
    truth.rename(root / "truth.h5")
    config = root / "label.yaml"
    config.write_text(f"label:\n  iterations: {ITERATIONS}\n  device: cpu\n  batch_size: 20\n")
    assert ptycl_main(["label", str(scan), "-c", str(config)]) == 0
    return scan, root / "truth.h5"


@pytest.mark.slow  # the shared fixture reconstructs a scan (docs/labels-iterative.md, Tests)
def test_label_file_layout_and_geometry(labelled: tuple[Path, Path]) -> None:
    scan, _ = labelled
    label_path = scan.with_name(scan.stem + ".label.h5")
    with open_scan(scan) as source:
        metadata = source.metadata
        positions_m = source.read(np.arange(source.n_committed())).positions_m
        label = source.label()  # what ptycl train reads: the file beside the scan
    assert label is not None and label.probe is not None
    assert label.probe.shape == metadata.geometry.frame_shape
    np.testing.assert_allclose(label.pixel_m, metadata.geometry.object_pixel_m, rtol=1e-12)
    # the centre sits mid-scan and every position's patch lies inside the object
    np.testing.assert_allclose(
        label.center_m, (positions_m.max(0) + positions_m.min(0)) / 2, rtol=0, atol=1e-15
    )
    rows_cols = label.pixel_coordinates(positions_m)
    assert rows_cols.min() >= 16 and np.all(rows_cols.max(0) <= np.array(label.values.shape) - 16)
    with h5py.File(label_path) as f:
        process = f[PROCESS]
        np.testing.assert_array_equal(process[POSITIONS][...], positions_m)
        attrs = dict(process.attrs)
        assert len(process["data_errors"]) == ITERATIONS
    assert attrs["engine"] == "pty-chi LSQML" and attrs["iterations"] == ITERATIONS
    assert attrs["stopped_by"] == "iterations"
    assert attrs["amplitude_reference"] == "incident photons"
    assert np.isfinite(attrs["final_data_error"]) and attrs["final_data_error"] > 0


@pytest.mark.slow
def test_label_recovers_the_object_better_than_a_constant(labelled: tuple[Path, Path]) -> None:
    scan, truth_path = labelled
    truth = read_object_image(truth_path)
    label = read_object_image(scan.with_name(scan.stem + ".label.h5"))
    with open_scan(scan) as source:
        positions_m = source.read(np.arange(source.n_committed())).positions_m
    errors = label_errors(label, truth, positions_m)
    assert errors.phase_mae <= 0.5 * errors.constant_phase_mae, errors
    assert errors.amplitude_mae < errors.constant_amplitude_mae, errors


def test_referencing_removes_a_ramp_and_the_global_phase() -> None:
    rng = np.random.default_rng(3)
    size, shape = 16, (64, 64)
    rows, cols = np.indices(shape)
    structure = 0.3 * np.sin(rows / 5.0) * np.cos(cols / 7.0)
    ramp = (0.05, -0.08)  # rad/px
    values = 0.8 * np.exp(1j * (structure + ramp[0] * rows + ramp[1] * cols + 2.0))
    probe = np.zeros((size, size), np.complex64)
    probe[4:12, 4:12] = 1.0
    image = ObjectImage(values.astype(np.complex64), (1e-8, 1e-8), probe=probe)
    positions_m = rng.uniform(-12e-8, 12e-8, size=(60, 2))
    result = reference_label(image, positions_m, incident_photons_per_frame=None)
    referenced = result.image
    area = illuminated_area(referenced, positions_m)
    # the whole mean gradient goes: the ramp and what the structure itself averages to
    own = phase_ramp(np.exp(1j * structure), area)
    np.testing.assert_allclose(result.removed_ramp_rad_per_px, np.add(ramp, own), atol=1e-6)
    np.testing.assert_allclose(phase_ramp(referenced.values, area), 0, atol=1e-6)
    assert abs(np.angle(np.sum(referenced.values[area]))) < 0.05  # mean phase ~ 0
    # amplitude normalised so its 95th percentile on the illuminated area is 1
    assert np.quantile(np.abs(referenced.values[area]), 0.95) == pytest.approx(1.0, rel=1e-5)
    # the product probe x object, and so every frame, is unchanged up to a global phase
    before = image.values[24:40, 24:40] * image.probe
    after = referenced.values[24:40, 24:40] * referenced.probe
    ratio = after[probe != 0] / before[probe != 0]
    np.testing.assert_allclose(np.abs(ratio), np.abs(ratio[0]), rtol=1e-4)
    np.testing.assert_allclose(np.angle(ratio * np.conj(ratio[0])), 0, atol=1e-4)


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "scan0000_broken.h5"
    broken.write_bytes(b"not an hdf5 file at all")
    assert ptycl_main(["label", str(broken), "--set", "label.iterations=1"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(broken) in lines[0] and "not an HDF5 file" in lines[0]


def test_no_initial_probe_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A foreign scan states no probe diameter: without --probe or the setting, one line."""
    (scan,) = simulate_scans(
        SimulateSettings(out_dir=tmp_path, n_scans=1, frame_size=32, frames_per_scan=8)
    )
    with open_scan(scan) as source:
        metadata = source.metadata
    foreign = ScanMetadata(scan_id="x", geometry=metadata.geometry)
    with pytest.raises(ValueError, match="no initial probe"):
        initial_probe(foreign, LabelSettings())
    probe, source = initial_probe(foreign, LabelSettings(probe_diameter_px=6.0))
    assert probe.shape == metadata.geometry.frame_shape and "label.probe_diameter_px" in source
    capsys.readouterr()  # the simulator's log lines
    assert ptycl_main(["label", str(scan), "--probe", str(tmp_path / "none.npy")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "none.npy" in lines[0]


@pytest.mark.slow  # two small scans labelled and inferred
def test_bench_label_quick(tmp_path: Path) -> None:
    """The suite's structure on a tiny workload: every scan scored against its truth, rates
    positive, the ratio what its parts give, the markdown written (no continual runs)."""
    from ptycl.bench import label as bench_label
    from ptycl.config import load_config

    config = load_config(
        None,
        [
            f"simulate.out_dir={tmp_path / 'unused'}",
            "simulate.families=[siemens, texture]",
            "simulate.frames_per_scan=60",
            "label.iterations=3",
            "model.width=4",
            "model.depth=2",
            "train.device=cpu",
        ],
    )
    result = bench_label.run(config, tmp_path / "out", quick=True, train=False)
    assert [s["scan_id"] for s in result["scans"]] == ["scan0000_siemens", "scan0001_texture"]
    for scan in result["scans"]:
        assert scan["frames"] == 60 and scan["epochs"] == 3
        assert 0 < scan["phase_mae"] < np.pi and 0 < scan["constant_phase_mae"] < np.pi
        assert scan["solver_frames_per_s"] > 0 and scan["network_frames_per_s"] > 0
        assert scan["network_over_solver"] == pytest.approx(
            scan["network_frames_per_s"] / scan["solver_frames_per_s"]
        )
    assert result["continual"] is None
    assert "network / solver" in (tmp_path / "out" / "label.md").read_text()


def test_time_budget_stops_the_solver(tmp_path: Path) -> None:
    """A time budget shorter than an epoch: one epoch, and the label says what stopped it."""
    from ptycl.label.label_scans import label_scan

    (scan,) = simulate_scans(
        SimulateSettings(out_dir=tmp_path, n_scans=1, frame_size=32, frames_per_scan=20)
    )
    settings = LabelSettings(iterations=50, time_budget_s=1e-3, device="cpu")
    written, label = label_scan(scan, settings)
    assert label.iterations == 1 and label.stopped_by == "time budget"
    assert len(label.data_errors) == 1 and written.exists()
