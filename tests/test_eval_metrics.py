"""Image errors, continual-learning summaries and the figures drawn from them."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ptycl.eval.continual_metrics import (
    read_error_matrix_csv,
    summarize_errors,
    write_error_matrix_csv,
    write_summary_json,
)
from ptycl.eval.image_metrics import (
    batch_errors,
    image_errors,
    object_errors,
    wrapped_phase_difference,
)
from ptycl.eval.plots import (
    plot_cost_per_scan,
    plot_error_matrix,
    plot_error_over_time,
    plot_reconstruction,
)
from ptycl.io.records import ObjectImage

NAN = math.nan


def smooth_images(shape=(64, 64), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An amplitude in [0, 1] and a phase in (-pi, pi] with some structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]] / 10.0
    amplitude = 0.5 + 0.3 * np.sin(y) * np.cos(x) + 0.05 * rng.standard_normal(shape)
    phase = np.angle(np.exp(1j * (2.0 * np.sin(x + y) + 0.2 * rng.standard_normal(shape))))
    return np.clip(amplitude, 0, 1), phase


# ---- image metrics ------------------------------------------------------------------------


def test_a_perfect_prediction_has_no_error():
    amplitude, phase = smooth_images()
    errors = image_errors(amplitude, phase, amplitude, phase)
    assert errors.amplitude_mae == 0 and errors.phase_mae == 0
    assert errors.amplitude_psnr == math.inf and errors.phase_psnr == math.inf
    assert errors.amplitude_ssim == pytest.approx(1.0) and errors.phase_ssim == pytest.approx(1.0)


def test_known_offsets_give_known_mae_and_psnr():
    amplitude, phase = smooth_images()
    errors = image_errors(np.clip(amplitude + 0.1, None, 10), phase + 0.2, amplitude, phase)
    assert errors.amplitude_mae == pytest.approx(0.1, abs=1e-12)
    assert errors.phase_mae == pytest.approx(0.2, abs=1e-12)
    # PSNR = 10 log10(range^2 / MSE): range 1 for amplitude, 2 pi for phase
    assert errors.amplitude_psnr == pytest.approx(10 * np.log10(1 / 0.01), abs=1e-9)
    assert errors.phase_psnr == pytest.approx(10 * np.log10((2 * np.pi) ** 2 / 0.04), abs=1e-9)
    assert 0.5 < errors.amplitude_ssim < 1.0


def test_phase_errors_are_measured_across_the_wrap():
    # truth just below pi, prediction just above -pi: 0.1 apart, not 2 pi - 0.1
    true_phase = np.full((32, 32), np.pi - 0.05)
    predicted_phase = np.full((32, 32), -np.pi + 0.05)
    amplitude = np.full((32, 32), 0.5)
    errors = image_errors(amplitude, predicted_phase, amplitude, true_phase)
    assert errors.phase_mae == pytest.approx(0.1, abs=1e-12)
    assert errors.phase_psnr == pytest.approx(10 * np.log10((2 * np.pi) ** 2 / 0.01), abs=1e-9)
    np.testing.assert_allclose(
        wrapped_phase_difference(predicted_phase, true_phase), 0.1, atol=1e-12
    )

    # a phase ramp that wraps in one image and is unwrapped in the other is the same phase
    _, y = np.mgrid[:64, :64]
    unwrapped = 2.5 + 0.02 * y  # crosses pi
    wrapped = np.angle(np.exp(1j * unwrapped))
    assert (wrapped < 0).any()
    errors = image_errors(np.full((64, 64), 0.5), wrapped, np.full((64, 64), 0.5), unwrapped)
    assert errors.phase_mae < 1e-12 and errors.phase_ssim == pytest.approx(1.0)


def test_full_mask_ssim_is_skimages_own():
    amplitude, phase = smooth_images()
    rng = np.random.default_rng(1)
    noisy = np.clip(amplitude + 0.05 * rng.standard_normal(amplitude.shape), 0, 1)
    errors = image_errors(noisy, phase, amplitude, phase)
    expected = structural_similarity(amplitude, noisy, data_range=1.0)
    assert errors.amplitude_ssim == pytest.approx(expected, abs=1e-12)
    assert errors.amplitude_ssim < 0.99


def test_mask_restricts_every_metric_to_the_covered_area():
    amplitude, phase = smooth_images()
    mask = np.zeros(amplitude.shape, bool)
    mask[12:52, 10:50] = True
    # right inside the mask, zero (like unstitched pixels) outside it
    errors = image_errors(
        np.where(mask, amplitude, 0), np.where(mask, phase, 0), amplitude, phase, mask
    )
    assert errors.amplitude_mae == 0 and errors.phase_mae == 0
    assert errors.amplitude_psnr == math.inf
    # no SSIM window reaches across the mask's edge into the zeros
    assert errors.amplitude_ssim == pytest.approx(1.0) and errors.phase_ssim == pytest.approx(1.0)
    # whereas over the whole image the zeros count
    assert image_errors(np.where(mask, amplitude, 0), phase, amplitude, phase).amplitude_mae > 0.1

    with pytest.raises(ValueError, match="no pixel"):
        image_errors(amplitude, phase, amplitude, phase, np.zeros_like(mask))


def test_batch_errors_average_the_patches():
    rng = np.random.default_rng(2)
    true_amplitude = rng.random((5, 16, 16))
    true_phase = rng.uniform(-np.pi, np.pi, (5, 16, 16))
    predicted_amplitude = np.clip(true_amplitude + 0.05 * rng.standard_normal((5, 16, 16)), 0, 1)
    predicted_phase = true_phase + 0.1 * rng.standard_normal((5, 16, 16))

    batch = batch_errors(predicted_amplitude, predicted_phase, true_amplitude, true_phase)
    per_patch = [
        image_errors(*p)
        for p in zip(predicted_amplitude, predicted_phase, true_amplitude, true_phase, strict=True)
    ]
    for name, value in batch.to_dict().items():
        assert value == pytest.approx(np.mean([getattr(e, name) for e in per_patch]), rel=1e-12)


def test_object_errors_need_one_grid():
    amplitude, phase = smooth_images()
    truth = ObjectImage((amplitude * np.exp(1j * phase)).astype(np.complex64), (1e-8, 1e-8))
    assert object_errors(truth, truth).amplitude_mae == 0
    moved = ObjectImage(truth.values, truth.pixel_m, (5e-9, 0.0))
    with pytest.raises(ValueError, match="different grids"):
        object_errors(moved, truth)


# ---- continual metrics --------------------------------------------------------------------

# scan a: 1.0 when learned, better (0.8) after b, worse (1.2) at the end
# scan b: 2.0 when learned, 2.5 at the end; scan c: 3.0 when learned
R = np.array(
    [
        [1.0, NAN, NAN],
        [0.8, 2.0, NAN],
        [1.2, 2.5, 3.0],
    ]
)
IDS = ("a", "b", "c")


def test_summary_of_a_hand_computed_matrix():
    summary = summarize_errors(R, IDS, metric="phase_mae")
    assert summary.final_average_error == pytest.approx((1.2 + 2.5 + 3.0) / 3)
    # final minus just-learned: (1.2 - 1.0, 2.5 - 2.0)
    assert summary.backward_transfer == pytest.approx((0.2 + 0.5) / 2)
    # final minus best before the end: a's best was 0.8 (after b), b's 2.0
    assert summary.forgetting == pytest.approx({"a": 0.4, "b": 0.5})
    assert summary.mean_forgetting == pytest.approx(0.45)
    assert summary.final_over_best == pytest.approx({"a": 1.5, "b": 1.25})
    assert summary.average_error_per_step == pytest.approx((1.0, 1.4, (1.2 + 2.5 + 3.0) / 3))
    assert summary.metric == "phase_mae"


def test_improving_on_old_scans_is_negative_forgetting():
    improving = np.array([[2.0, NAN], [1.0, 1.5]])
    summary = summarize_errors(improving, ("a", "b"))
    assert summary.backward_transfer == pytest.approx(-1.0)
    assert summary.forgetting == pytest.approx({"a": -1.0})
    assert summary.final_over_best == pytest.approx({"a": 0.5})


def test_a_single_scan_has_no_history():
    summary = summarize_errors(np.array([[0.3]]), ("only",))
    assert summary.final_average_error == pytest.approx(0.3)
    assert math.isnan(summary.backward_transfer) and math.isnan(summary.mean_forgetting)
    assert summary.forgetting == {} and summary.final_over_best == {}
    as_dict = summary.to_dict()
    assert as_dict["backward_transfer"] is None and as_dict["mean_forgetting"] is None


def test_matrix_is_checked():
    with pytest.raises(ValueError, match="shape"):
        summarize_errors(R[:2], IDS)
    infinite = R.copy()
    infinite[2, 1] = math.inf
    with pytest.raises(ValueError, match=r"R\[2, 1\] \(scan b after scan c\)"):
        summarize_errors(infinite, IDS)
    with pytest.raises(ValueError, match="repeat"):
        summarize_errors(R, ("a", "a", "c"))


# ptycl watch's rows: the diagonal and a sample of earlier scans, NaN where never evaluated.
# a: 1.0 learned, 0.8 after b, not evaluated after c or d, 1.1 at the end
# b: 2.0 learned, not evaluated since (no final value: no forgetting for b)
# c: 3.0 learned, 2.7 after d, 3.3 at the end; d: 4.0 learned, never again; e: 5.0
SPARSE = np.array(
    [
        [1.0, NAN, NAN, NAN, NAN],
        [0.8, 2.0, NAN, NAN, NAN],
        [NAN, NAN, 3.0, NAN, NAN],
        [NAN, NAN, 2.7, 4.0, NAN],
        [1.1, NAN, 3.3, NAN, 5.0],
    ]
)
SPARSE_IDS = ("a", "b", "c", "d", "e")


def test_summary_of_a_sparse_matrix_uses_the_cells_evaluated():
    summary = summarize_errors(SPARSE, SPARSE_IDS, metric="phase_mae")
    # the last row's evaluated scans: a, c, e
    assert summary.final_average_error == pytest.approx((1.1 + 3.3 + 5.0) / 3)
    # final minus just-learned, for a and c (b and d have no final value)
    assert summary.backward_transfer == pytest.approx(((1.1 - 1.0) + (3.3 - 3.0)) / 2)
    # a's best before the end 0.8, c's 2.7; b and d left out, not counted as zero
    assert summary.forgetting == pytest.approx({"a": 1.1 - 0.8, "c": 3.3 - 2.7})
    assert summary.mean_forgetting == pytest.approx((0.3 + 0.6) / 2)
    assert summary.final_over_best == pytest.approx({"a": 1.1 / 0.8, "c": 3.3 / 2.7})
    assert summary.average_error_per_step == pytest.approx(
        (1.0, 1.4, 3.0, 3.35, (1.1 + 3.3 + 5.0) / 3)
    )
    assert "error_matrix" not in summary.to_dict()  # a run's metrics.json holds R sparse
    as_dict = summary.to_dict(matrix=True)
    assert as_dict["error_matrix"][2] == [None, None, 3.0, None, None]
    # a last row with only its diagonal: forgetting undefined, the final average its one value
    alone = summarize_errors(SPARSE[:4, :4], SPARSE_IDS[:4])
    assert alone.final_average_error == pytest.approx(3.35)  # c 2.7, d 4.0
    assert alone.forgetting == pytest.approx({"c": 2.7 - 3.0})  # improved: negative
    only_diagonal = SPARSE[:3, :3]
    summary = summarize_errors(only_diagonal, SPARSE_IDS[:3])
    assert summary.final_average_error == 3.0 and summary.forgetting == {}
    assert math.isnan(summary.mean_forgetting) and math.isnan(summary.backward_transfer)


def test_a_sparse_matrix_round_trips_through_csv_and_is_drawn(tmp_path):
    csv_path = write_error_matrix_csv(SPARSE, SPARSE_IDS, tmp_path / "R.csv")
    assert csv_path.read_text().splitlines()[4] == "d,,,2.7,4.0,"
    back, ids = read_error_matrix_csv(csv_path)
    assert ids == SPARSE_IDS
    np.testing.assert_array_equal(back, SPARSE)
    read_png(plot_error_matrix(SPARSE, SPARSE_IDS, tmp_path / "matrix.png"))
    read_png(plot_error_over_time(SPARSE, SPARSE_IDS, tmp_path / "first.png", first_k=3))


def test_the_matrix_figure_of_a_long_run_stops_growing(tmp_path):
    T = 300
    ids = [f"scan{i:04d}" for i in range(T)]
    rng = np.random.default_rng(0)
    big = np.where(rng.random((T, T)) < 0.05, rng.random((T, T)), NAN)
    big[np.triu_indices(T, 1)] = NAN
    np.fill_diagonal(big, 0.5)
    image = read_png(plot_error_matrix(big, ids, tmp_path / "big.png"))
    # capped at 8 inches high (100 dpi), where 0.55 inch per scan would be 167 inches
    assert image.shape[0] <= 800
    read_png(plot_error_over_time(big, ids, tmp_path / "big_first.png"))


def test_csv_and_json_round_trip(tmp_path):
    csv_path = write_error_matrix_csv(R, IDS, tmp_path / "out" / "R.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "after_scan,a,b,c"
    assert lines[1] == "a,1.0,,"
    back, ids = read_error_matrix_csv(csv_path)
    assert ids == IDS
    np.testing.assert_array_equal(back, R)  # NaN compare equal here

    summary = summarize_errors(R, IDS, metric="amplitude_mae")
    loaded = json.loads(write_summary_json(summary, tmp_path / "summary.json").read_text())
    assert loaded["metric"] == "amplitude_mae"
    assert loaded["scan_ids"] == list(IDS)
    assert loaded["backward_transfer"] == pytest.approx(0.35)
    assert loaded["forgetting"] == pytest.approx({"a": 0.4, "b": 0.5})
    assert loaded["error_matrix"][0] == [1.0, None, None]
    assert loaded["error_matrix"][2] == [1.2, 2.5, 3.0]


# ---- plots --------------------------------------------------------------------------------


def read_png(path) -> np.ndarray:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05, "the figure is blank"
    return image


def test_error_matrix_and_curves_are_drawn(tmp_path):
    read_png(plot_error_matrix(R, IDS, tmp_path / "matrix.png", title="phase MAE"))
    read_png(plot_error_over_time(R, IDS, tmp_path / "single.png", first_k=2))
    strategies = {"incremental": R, "der": R * 0.8, "cumulative": R * 0.6}
    read_png(plot_error_over_time(strategies, IDS, tmp_path / "several.png", first_k=3))
    read_png(
        plot_cost_per_scan(
            {"der": [1.0, 1.1, 1.0], "cumulative": [1.0, 2.0, 3.0]}, tmp_path / "cost.png", IDS
        )
    )


def test_reconstruction_is_drawn_beside_the_truth(tmp_path):
    amplitude, phase = smooth_images((80, 96))
    truth = ObjectImage((amplitude * np.exp(1j * phase)).astype(np.complex64), (1e-8, 1e-8))
    predicted = ObjectImage(
        (amplitude * 0.9 * np.exp(1j * (phase + 0.1))).astype(np.complex64), (1e-8, 1e-8)
    )
    covered = np.zeros(amplitude.shape, bool)
    covered[10:70, 10:86] = True

    alone = read_png(plot_reconstruction(predicted, None, covered, tmp_path / "alone.png"))
    beside = read_png(plot_reconstruction(predicted, truth, covered, tmp_path / "beside.png"))
    # prediction only: one column of two panels; with the truth: prediction, truth, error
    assert alone.shape[1] < alone.shape[0] < beside.shape[1]

    elsewhere = ObjectImage(truth.values, truth.pixel_m, (1e-6, 0.0))
    with pytest.raises(ValueError, match="different grids"):
        plot_reconstruction(predicted, elsewhere, covered, tmp_path / "no.png")


def test_weak_phase_contrast_is_visible_in_the_reconstruction_plot(tmp_path):
    """Two phase levels 0.2 rad apart (a weak sample, amplitude 0.95-0.97) must come out as
    clearly different colours: the colour limits follow the image, not -pi..pi or 0..1."""
    phase = np.zeros((60, 60), np.float32)
    phase[:, 30:] = -0.2
    amplitude = np.where(phase < 0, 0.95, 0.97).astype(np.float32)
    image = ObjectImage((amplitude * np.exp(1j * phase)).astype(np.complex64), (1e-8, 1e-8))
    png = read_png(plot_reconstruction(image, None, None, tmp_path / "weak.png"))[..., :3]
    colours, counts = np.unique(png.reshape(-1, 3).round(2), axis=0, return_counts=True)
    # The four largest areas of one colour: the background, and each panel's two halves.
    largest = colours[np.argsort(counts)[::-1][:5]]
    painted = [c for c in largest if not np.allclose(c, 1.0)]  # not the white background
    distances = [np.abs(a - b).max() for i, a in enumerate(painted) for b in painted[i + 1 :]]
    assert len(painted) >= 4
    assert min(distances) > 0.3, largest  # every pair of areas clearly apart
