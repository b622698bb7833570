"""Geometry across tools: scans and reconstructions written by ptychodus 1.7's own writers.

ptychodus stores the probe position in the CXI translation (CXI's own meaning is the sample
translation, its negative); it centres images at index (N - 1) / 2, ptycl at N // 2. Criteria,
declared before the runs: ptycl's positions equal the writer's exactly (sign and axes); the
true object patches stitched at those positions give back the object with a correlation of at
least 0.99 over the covered area; a reconstruction written by ``ptycl reconstruct`` reads back
in ptychodus with the same positions and the same object pixel under each of them.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from ptychodus.api.io import load_product, save_product
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product
from ptychodus.plugins.cxi_file import CXIProductFileIO

from ptycl.cli import main
from ptycl.commands.reconstruct import warn_if_the_other_convention_fits
from ptycl.io.object_image import label_path_for, read_object_image
from ptycl.io.source import open_scan
from ptycl.recon.consistency import check_positions
from ptycl.recon.infer import ScanPrediction
from ptycl.recon.output import write_reconstruction
from ptycl.recon.stitch import CanvasGrid, stitch_patches
from tests.conftest import TINY
from tests.helpers_ptychodus import make_scene, write_scene


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    scene = make_scene()
    return scene, write_scene(tmp_path_factory.mktemp("ptychodus"), scene)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.abs(np.vdot(a, b)) / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real))


def test_positions_read_are_the_writers_sign_and_axes(scene_files):
    scene, paths = scene_files
    with open_scan(paths["scan"]) as scan:
        read = scan.read(np.arange(len(scene.frames)))
        assert scan.position_convention.kind == "probe"
        assert "ptychodus" in scan.position_convention.reason
    np.testing.assert_array_equal(read.positions_m, scene.positions_yx_m)
    np.testing.assert_array_equal(read.frames, scene.frames)
    # told otherwise, ptycl does as told, and says so
    with open_scan(paths["scan"], positions="sample") as scan:
        forced = scan.read(np.arange(len(scene.frames))).positions_m
        assert "set by position_convention=sample" in scan.position_convention.reason
    np.testing.assert_array_equal(forced, -scene.positions_yx_m)


@pytest.mark.parametrize("product", ["h5", "cxi", "npz"])
def test_label_from_each_ptychodus_product_puts_the_true_patches_back(
    scene_files, product, tmp_path
):
    scene, paths = scene_files
    out = tmp_path / "scan0001.label.h5"
    assert (
        main(["label", str(paths["scan"]), "--from", str(paths[product]), "--out", str(out)]) == 0
    )
    label = read_object_image(out)
    np.testing.assert_array_equal(label.values, scene.object_array)
    with open_scan(paths["scan"]) as scan:
        positions = scan.read(np.arange(len(scene.frames))).positions_m
    # every position lands on the object pixel ptychodus's own geometry gives it
    rows, cols = label.pixel_coordinates(positions).T
    np.testing.assert_allclose(rows, scene.rows_px, atol=1e-6)
    np.testing.assert_allclose(cols, scene.cols_px, atol=1e-6)

    patches = scene.true_patches()

    def correlation_at(at: np.ndarray) -> float:
        stitched = stitch_patches(
            np.abs(patches), np.angle(patches), at, label.pixel_m, canvas=CanvasGrid.of_image(label)
        )
        covered = stitched.covered
        return _correlation(stitched.image.values[covered], label.values[covered])

    assert correlation_at(positions) >= 0.99
    # the criterion can fail: at the positions mirrored about the scan's middle (ptycl's old
    # reading, recentred) the smooth object still correlates, but far below it
    assert correlation_at(-positions + 2 * positions.mean(axis=0)) < 0.9


def test_label_refuses_a_reconstruction_of_the_negated_scan(scene_files, tmp_path, capsys):
    _scene, paths = scene_files
    out = tmp_path / "x.label.h5"
    code = main(
        [
            "label",
            str(paths["scan"]),
            "--from",
            str(paths["h5"]),
            "--out",
            str(out),
            "--positions",
            "sample",
        ]
    )
    assert code == 2 and not out.exists()
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "negated" in error and "--positions probe" in error


def test_label_refuses_what_cannot_be_a_label(scene_files, tmp_path, capsys):
    _, paths = scene_files
    code = main(["label", str(paths["scan"]), "--from", str(paths["diffraction"])])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "diffraction.cxi" in error and "cannot be a label" in error and "entry_1" in error


def test_plain_array_label_with_its_pixel_and_centre(scene_files, tmp_path):
    scene, paths = scene_files
    array = tmp_path / "object.npy"
    np.save(array, scene.object_array)
    pixel = scene.geometry.pixel_width_m
    middle = (scene.geometry.center_y_m, scene.geometry.center_x_m)
    code = main(
        [
            "label",
            str(paths["scan"]),
            "--from",
            str(array),
            "--out",
            str(tmp_path / "a.label.h5"),
            "--pixel-size",
            str(pixel),
            f"--center={middle[0]},{middle[1]}",
        ]
    )
    assert code == 0
    from_array = read_object_image(tmp_path / "a.label.h5")
    assert (
        main(
            [
                "label",
                str(paths["scan"]),
                "--from",
                str(paths["h5"]),
                "--out",
                str(tmp_path / "b.label.h5"),
            ]
        )
        == 0
    )
    from_product = read_object_image(tmp_path / "b.label.h5")
    np.testing.assert_allclose(from_array.center_m, from_product.center_m, rtol=0, atol=1e-15)
    assert from_array.pixel_m == from_product.pixel_m


@pytest.mark.slow  # trains a tiny model (docs/formats.md, "Measured")
def test_round_trip_ptychodus_product_to_ptycl_reconstruction_and_back(scene_files, tmp_path):
    """ptychodus writes a product -> ptycl label --from -> ptycl train, reconstruct ->
    ptychodus's two product readers read the result with the same geometry."""
    scene, paths = scene_files
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = scans / paths["scan"].name
    scan.write_bytes(paths["scan"].read_bytes())
    assert main(["label", str(scan), "--from", str(paths["h5"])]) == 0
    assert label_path_for(scan).exists()
    run = tmp_path / "run"
    settings = [*TINY, f"scans=[{scans}]", f"run.output_dir={run}", "train.strategy=incremental"]
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    assert main(["train", *overrides]) == 0
    out = tmp_path / "recon"
    assert main(["reconstruct", str(scan), "--run", str(run), "--out", str(out)]) == 0
    written = out / "scan0001.recon.h5"
    ours = read_object_image(written)

    for product in (load_product(written), CXIProductFileIO().read(written)):
        points = product.probe_positions
        np.testing.assert_allclose(
            points.get_coordinates_x_m(), scene.positions_yx_m[:, 1], rtol=0, atol=1e-15
        )
        np.testing.assert_allclose(
            points.get_coordinates_y_m(), scene.positions_yx_m[:, 0], rtol=0, atol=1e-15
        )
        geometry = product.object_.get_geometry()
        assert geometry.pixel_width_m == pytest.approx(scene.geometry.pixel_width_m, rel=1e-12)
        assert geometry.pixel_height_m == pytest.approx(scene.geometry.pixel_height_m, rel=1e-12)
        np.testing.assert_array_equal(product.object_.get_array()[0], ours.values)
        # the same object pixel under every position, in ptychodus's geometry and in ptycl's
        rows, cols = ours.pixel_coordinates(scene.positions_yx_m).T
        np.testing.assert_allclose(
            geometry.map_probe_positions_to_object_y_px(points), rows, atol=1e-6
        )
        np.testing.assert_allclose(
            geometry.map_probe_positions_to_object_x_px(points), cols, atol=1e-6
        )
        probe = product.probes.get_array()
        assert probe.shape[-2:] == (64, 64) and np.abs(probe).max() > 0
        assert product.metadata.photon_energy_eV == pytest.approx(8800.0)
        assert product.metadata.detector_distance_m == pytest.approx(2.0)


def test_info_says_the_convention_and_prints_json_and_the_path_plot(scene_files, tmp_path, capsys):
    scene, paths = scene_files
    assert main(["info", str(paths["scan"])]) == 0
    line = capsys.readouterr().out
    assert "translation read as the probe position: written by ptychodus" in line
    y, x = scene.positions_yx_m.T * 1e6
    assert f"y {y.min():.4g}..{y.max():.4g} um, x {x.min():.4g}..{x.max():.4g} um" in line

    plots = tmp_path / "plots"
    assert main(["info", str(paths["scan"]), "--json", "--plot", str(plots)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == len(scene.frames) and report["frame_shape"] == [64, 64]
    assert report["dtype"] == "uint32" and report["energy_ev"] == pytest.approx(8800.0)
    assert report["distance_m"] == 2.0 and report["detector_pixel_m"] == [75e-6, 75e-6]
    assert report["position_convention"] == "probe"
    np.testing.assert_array_equal(np.array(report["positions_m"]), scene.positions_yx_m)
    label = report["label"]
    assert label["shape"] == [151, 160] and label["probe_shape"] == [64, 64]
    assert label["pixel_m"][0] == pytest.approx(scene.geometry.pixel_height_m, rel=1e-12)
    # the centre pixel (H // 2, W // 2) of an even width sits half a pixel past the middle
    assert label["center_m"][1] == pytest.approx(
        scene.geometry.center_x_m + scene.geometry.pixel_width_m / 2, rel=1e-12
    )
    assert (plots / "scan0001.path.png").stat().st_size > 10_000

    assert main(["info", str(paths["diffraction"]), "--json"]) == 1
    problem = json.loads(capsys.readouterr().out)
    assert problem["path"] == str(paths["diffraction"]) and "translation" in problem["error"]


def test_reconstruct_says_when_the_negated_positions_are_more_self_consistent(scene_files, caplog):
    """Patches as a perfect model predicts them: at the positions as read they agree where they
    overlap; read with the other convention (here: forced) the check names it."""
    scene, paths = scene_files
    amplitude = np.abs(scene.true_patches()).astype(np.float32)
    pixel = (scene.geometry.pixel_height_m, scene.geometry.pixel_width_m)
    for setting, warned in (("auto", False), ("sample", True)):
        with open_scan(paths["scan"], positions=setting) as scan:
            positions = scan.read(np.arange(len(scene.frames))).positions_m
            convention = scan.position_convention
        check = check_positions(amplitude, positions, pixel)
        assert check.other_fits_better is warned
        prediction = ScanPrediction(
            scan.metadata,
            amplitude,
            np.zeros_like(amplitude),
            positions,
            pixel,
            None,
            position_convention=convention,
        )
        caplog.clear()
        with caplog.at_level("WARNING", logger="ptycl.recon"):
            warn_if_the_other_convention_fits(prediction)
        assert ("rerun with --positions probe" in caplog.text) is warned


@pytest.mark.parametrize("fmt", ["hdf5", "zarr"])
def test_reconstruction_file_reads_back_in_ptycl_with_its_geometry(scene_files, tmp_path, fmt):
    scene, paths = scene_files
    patches = scene.true_patches()
    pixel = (scene.geometry.pixel_height_m, scene.geometry.pixel_width_m)
    with open_scan(paths["scan"]) as scan:
        metadata = scan.metadata
    prediction = ScanPrediction(
        metadata, np.abs(patches), np.angle(patches), scene.positions_yx_m, pixel, None
    )
    stitched = prediction.stitch()
    path = write_reconstruction(
        tmp_path / f"r.recon.{'h5' if fmt == 'hdf5' else 'zarr'}", prediction, stitched, fmt
    )
    back = read_object_image(path)
    np.testing.assert_array_equal(back.values, stitched.image.values)
    assert back.pixel_m == stitched.image.pixel_m and back.center_m == stitched.image.center_m
    assert back.probe is not None and back.probe.shape == (64, 64)  # the stand-in support


def test_npz_members_are_checked_before_they_are_inflated(scene_files, tmp_path, capsys):
    """An .npz member may declare any size (and compress a huge one to almost nothing): its
    .npy header is read first. This one declares 2^28 complex values and holds none."""
    _, paths = scene_files
    bomb = tmp_path / "bomb.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<c8", "fortran_order": False, "shape": (1 << 14, 1 << 14)}
    )
    with zipfile.ZipFile(bomb, "w") as archive:
        archive.writestr("object.npy", header.getvalue())
    out = tmp_path / "x.h5"
    assert main(["label", str(paths["scan"]), "--from", str(bomb), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "larger than ptycl reads" in error and "bomb.npz" in error and not out.exists()


def test_label_from_a_reconstruction_in_another_frame_is_moved_into_the_scans(
    scene_files, tmp_path
):
    """A reconstruction whose positions and object centre share an offset from the scan's
    (another stage origin): the label's centre moves so each position keeps its pixel."""
    scene, paths = scene_files
    shift_x, shift_y = 7.5e-6, -3.25e-6
    product = scene.product
    shifted = Product(
        metadata=product.metadata,
        probe_positions=ProbePositionSequence(
            [
                ProbePosition(p.index, p.x_m + shift_x, p.y_m + shift_y)
                for p in product.probe_positions
            ]
        ),
        probes=product.probes,
        object_=Object(
            product.object_.get_array(),
            product.object_.get_pixel_geometry(),
            ObjectCenter(scene.geometry.center_x_m + shift_x, scene.geometry.center_y_m + shift_y),
        ),
        losses=[],
    )
    save_product(tmp_path / "shifted.h5", shifted)
    out = tmp_path / "shifted.label.h5"
    assert (
        main(
            ["label", str(paths["scan"]), "--from", str(tmp_path / "shifted.h5"), "--out", str(out)]
        )
        == 0
    )
    label = read_object_image(out)
    rows, cols = label.pixel_coordinates(scene.positions_yx_m).T
    np.testing.assert_allclose(rows, scene.rows_px, atol=1e-6)
    np.testing.assert_allclose(cols, scene.cols_px, atol=1e-6)
