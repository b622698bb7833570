"""Continual training end to end on tiny simulated scans: strategies, costs, resume, outputs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from ptycl.errors import CheckpointError, ConfigError
from ptycl.eval.evaluate import MATRIX_NAMES
from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.train.run import run_continual
from ptycl.train.strategies import STRATEGIES
from tests.conftest import tiny_config
from tests.helpers_report import evaluated


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_fills_the_error_matrix_and_counts_its_cost(tiny_scans, tmp_path, strategy):
    report = run_continual(tiny_config(tiny_scans, tmp_path, f"train.strategy={strategy}"))
    assert len(report.scan_ids) == 3
    phase = report.matrix("phase_mae")
    for i in range(3):  # row i has scans 0..i, NaN after
        assert all(math.isfinite(v) and 0 <= v <= math.pi for v in phase[i][: i + 1])
        assert all(math.isnan(v) for v in phase[i][i + 1 :])
    steps = [c["steps"] for c in report.costs]
    samples = [c["samples"] for c in report.costs]
    batch, replay = 8, 4
    if strategy == "cumulative":
        assert steps == [6, 12, 18]  # retrains on every scan seen: cost grows
        assert samples == [s * batch for s in steps]
    elif strategy == "joint":
        assert steps == [0, 0, 18]  # all at the end, cumulative's last budget
        assert samples == [s * batch for s in steps]
    else:
        assert steps == [6, 6, 6]  # a constant budget per scan
        draws = {"incremental": 0, "er": 1, "der": 1, "derpp": 2, "full_replay": 2, "fresh": 0}[
            strategy
        ]
        # the store is empty only before the first offer; after scan 0 every step replays
        assert samples[1] == samples[2] == 6 * (batch + draws * replay)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        written["strategy"] == strategy
        and written["summary"]["phase_mae"]["final_average_error"] > 0
    )
    # each scan's constant patch beside the errors, and the skills against it
    assert set(written["constants"]) == set(report.scan_ids)
    skill = report.matrix("phase_skill")
    error, constant = report.matrix("phase_offset_free_mae"), written["constants"]
    for j, scan_id in enumerate(report.scan_ids):
        expected = 1 - error[-1, j] / constant[scan_id]["phase_offset_free_mae"]
        assert skill[-1, j] == pytest.approx(expected)
    assert (tmp_path / "plots" / "R_phase_offset_free_mae.png").stat().st_size > 1000
    assert (tmp_path / "R_phase_mae.csv").read_text().startswith("after_scan,")
    # the first and the newest scan stitched with the final model, beside their truth
    shown = sorted(p.name for p in (tmp_path / "plots").glob("reconstruction_*.png"))
    assert shown == [f"reconstruction_{report.scan_ids[i]}.png" for i in (0, -1)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop_after", "position"),
    [(9, [1, 3, 9]), (6, [1, 0, 6])],  # in the middle of scan 1; before its first step
)
def test_resume_continues_exactly_as_an_uninterrupted_run(
    tiny_scans, tmp_path, stop_after, position
):
    """Mid-scan, the resumed run keeps the scan's Adam moments; at a scan's end, it starts
    the next scan with fresh ones, as the uninterrupted run did."""
    straight = run_continual(tiny_config(tiny_scans, tmp_path / "straight", "train.strategy=derpp"))
    interrupted_config = tiny_config(tiny_scans, tmp_path / "interrupted", "train.strategy=derpp")
    first = run_continual(interrupted_config, max_steps=stop_after)
    assert len(first.scan_ids) == 1
    state = load_checkpoint(tmp_path / "interrupted" / "checkpoints")
    assert state["trainer"]["position"] == position
    resumed = run_continual(interrupted_config, resume=True)
    # The weights below must match bit for bit; the evaluations only to float32 summation
    # order (oneDNN picks its reduction order per call), hence rel=1e-6.
    for metric in MATRIX_NAMES:
        flat_straight = evaluated(straight.matrix(metric))
        flat_resumed = evaluated(resumed.matrix(metric))
        assert flat_resumed == pytest.approx(flat_straight, rel=1e-6), metric
    assert [c["samples"] for c in resumed.costs] == [c["samples"] for c in straight.costs]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints")["trainer"]
    b = load_checkpoint(tmp_path / "interrupted" / "checkpoints")["trainer"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["store"]["seen"] == b["store"]["seen"]
    assert torch.equal(a["store"]["held"]["scan_index"], b["store"]["held"]["scan_index"])


@pytest.mark.slow
def test_resume_refuses_other_learning_settings_and_takes_other_runtime_ones(tiny_scans, tmp_path):
    run_continual(tiny_config(tiny_scans, tmp_path, "train.strategy=derpp"), max_steps=9)
    saved_config = (tmp_path / "config.yaml").read_text()
    for changed, key in [
        ("train.steps_per_scan=7", "train.steps_per_scan"),
        ("train.strategy=er", "train.strategy"),
        ("model.width=8", "model.width"),
        ("run.seed=1", "run.seed"),
    ]:
        config = tiny_config(tiny_scans, tmp_path, "train.strategy=derpp", changed)
        with pytest.raises(ConfigError, match=rf"^--resume: {key}: the run was trained with"):
            run_continual(config, resume=True)
    assert (tmp_path / "config.yaml").read_text() == saved_config  # the run's, to resume with
    # where and how often it checkpoints and logs may change: the run goes on to its end
    config = tiny_config(
        tiny_scans,
        tmp_path,
        "train.strategy=derpp",
        "train.checkpoint_every_steps=4",
        "run.log_level=WARNING",
    )
    report = run_continual(config, resume=True)
    assert [c["steps"] for c in report.costs] == [6, 6, 6]


@pytest.mark.slow
def test_resume_refuses_a_stream_with_other_scans_before_the_resume_point(tiny_scans, tmp_path):
    run_continual(tiny_config(tiny_scans, tmp_path / "run", "train.strategy=er"), max_steps=9)
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    paths = sorted(tiny_scans.iterdir())
    for rank, path in zip("cba", paths, strict=True):  # the same scans, listed last to first
        shutil.copy(path, reordered / f"{rank}_{path.name}")  # a link to a scan is refused
    config = tiny_config(reordered, tmp_path / "run", "train.strategy=er")
    with pytest.raises(
        CheckpointError, match=r"scan 0 of the run was .*resume with the same scans"
    ):
        run_continual(config, resume=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer_state", "adam_steps"), [("fresh_per_scan", 6), ("carried", 18)]
)
def test_adam_moments_start_afresh_with_each_new_scan(
    tiny_scans, tmp_path, optimizer_state, adam_steps
):
    """3 scans of 6 steps: the last scan's Adam state holds its own 6 steps, or all 18."""
    config = tiny_config(
        tiny_scans,
        tmp_path,
        "train.strategy=incremental",
        f"train.optimizer_state={optimizer_state}",
    )
    run_continual(config)
    trainer = load_checkpoint(tmp_path / "checkpoints")["trainer"]
    steps = {float(s["step"]) for s in trainer["optimizer"]["state"].values()}
    assert steps == {adam_steps}
    assert trainer["newest_task"] == 2


@pytest.mark.slow
def test_derpp_with_zero_weights_trains_like_incremental(tiny_scans, tmp_path):
    """The replay terms are the only difference: with alpha = beta = 0 the weights match."""
    incremental = tiny_config(tiny_scans, tmp_path / "a", "train.strategy=incremental")
    derpp = tiny_config(
        tiny_scans, tmp_path / "b", "train.strategy=derpp", "train.alpha=0", "train.beta=0"
    )
    run_continual(incremental)
    run_continual(derpp)
    a = load_checkpoint(tmp_path / "a" / "checkpoints")["trainer"]["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints")["trainer"]["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_bad_scan_is_skipped_with_a_one_line_reason(tiny_scans, tmp_path, caplog):
    bad = tmp_path / "scans"
    bad.mkdir()
    for path in sorted(tiny_scans.iterdir())[:2]:
        shutil.copy(path, bad / path.name)
    truncated = bad / "scan0001b_broken.h5"
    data = sorted(tiny_scans.iterdir())[2].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    report = run_continual(tiny_config(bad, tmp_path / "run", "train.strategy=er"))
    assert len(report.scan_ids) == 2  # the good scans were trained on
    assert len(report.rejected) == 1 and "scan0001b_broken.h5" in report.rejected[0]
    assert "\n" not in report.rejected[0]


@pytest.mark.slow
def test_a_one_frame_first_scan_trains_and_an_all_held_out_scan_is_rejected(
    tiny_scans, tmp_path, caplog
):
    """A spread needs two frames: the one-frame scan leaves the input standardisation to the
    next scan instead of fitting NaN (which made every later output NaN). A scan whose every
    frame is held out has nothing to train on: one line, and the stream goes on."""
    from ptycl.config import load_config
    from ptycl.simulate.run import simulate_scans
    from tests.conftest import TINY

    def one_frame_scan(family: str) -> str:
        settings = load_config(
            None,
            [
                *TINY,
                "simulate.n_scans=1",
                "simulate.frames_per_scan=1",
                f"simulate.families=[{family}]",
                f"simulate.out_dir={tmp_path / family}",
            ],
        ).simulate
        return str(simulate_scans(settings)[0])

    first = one_frame_scan("texture")  # 1 frame: round(0.25) = 0 held out, 1 trained on
    scans = sorted(str(path) for path in tiny_scans.iterdir())
    config = tiny_config(
        tiny_scans,
        tmp_path / "run",
        f"scans=[{first}, {scans[0]}, {scans[1]}]",
        "train.strategy=derpp",
    )
    with caplog.at_level("WARNING", logger="ptycl.train"):
        report = run_continual(config)
    assert f"{first}: no frame of 1 held out" in caplog.text  # said, not silently NaN
    assert report.scan_ids == ["scan0000_texture", "scan0000_manhattan", "scan0001_siemens"]
    model = load_checkpoint(tmp_path / "run" / "checkpoints")["trainer"]["model"]
    assert bool(model["input_fitted"])
    assert all(
        torch.isfinite(tensor).all() for tensor in model.values() if tensor.is_floating_point()
    )
    final = report.error_rows[-1]["phase_mae"]
    assert math.isnan(final[0])  # nothing of the one-frame scan was held out to evaluate
    assert all(math.isfinite(error) and error < math.pi for error in final[1:])

    all_held_out = tiny_config(
        tiny_scans,
        tmp_path / "held-out",
        f"scans=[{first}, {scans[0]}]",
        "prep.holdout_fraction=0.6",  # round(0.6) = 1: the one frame is held out
        "train.strategy=incremental",
    )
    report = run_continual(all_held_out)
    assert report.scan_ids == ["scan0000_manhattan"]
    assert len(report.rejected) == 1 and "none to train on" in report.rejected[0]
    assert first in report.rejected[0] and "\n" not in report.rejected[0]


def test_the_balanced_policy_is_refused_where_it_cannot_keep_a_slot_per_scan(tiny_scans, tmp_path):
    """Said at the start in one line: not as a ValueError when the scan past the last slot
    arrives, and never in watch mode, whose stream has no last scan."""
    from ptycl.parallel import Distributed
    from ptycl.stream.watch import Watcher

    config = tiny_config(
        tiny_scans,
        tmp_path / "run",
        "train.strategy=er",
        "train.store.policy=balanced",
        "train.store.capacity_samples=2",  # 2 slots, 3 scans
    )
    with pytest.raises(ConfigError, match="a slot per scan and the store has 2 per rank for 3"):
        run_continual(config)
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(ConfigError, match=r"train\.store\.policy: 'balanced' keeps a slot"):
        Watcher(tiny_scans, config, Distributed.single(torch.device("cpu")))


def test_a_fresh_model_per_scan_forgets_what_it_learned_and_joint_learns_at_the_end(
    tiny_scans, tmp_path
):
    """``fresh`` starts each scan from new weights (seeded by the scan), so the model after
    scan 1 owes nothing to scan 0; ``joint`` trains a new model only at the last scan."""
    fresh = run_continual(tiny_config(tiny_scans, tmp_path / "fresh", "train.strategy=fresh"))
    alone = run_continual(tiny_config(tiny_scans, tmp_path / "alone", "train.strategy=incremental"))
    # scan 0 is trained alike (a fresh model is the run's initial one, seeded by scan 0)...
    R_fresh, R_alone = fresh.matrix("phase_mae"), alone.matrix("phase_mae")
    assert R_fresh[0, 0] == pytest.approx(R_alone[0, 0], rel=1e-6)
    # ...after that, a fresh model's row differs from fine-tuning's
    assert R_fresh[1, 1] != pytest.approx(R_alone[1, 1], rel=1e-3)
    joint = run_continual(tiny_config(tiny_scans, tmp_path / "joint", "train.strategy=joint"))
    R_joint = joint.matrix("phase_mae")
    # nothing trained before the last scan: rows 0 and 1 are the untrained models'
    assert R_joint[0, 0] != pytest.approx(R_alone[0, 0], rel=1e-3)
    assert [c["steps"] for c in joint.costs] == [0, 0, 18]
