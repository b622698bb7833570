"""The train, scale and infer benchmark suites, run on workloads smaller than their quick mode.

A tiny model (width 4, depth 2) and one measured round of one step keep the whole file within
about a minute on the 2-core CI machine; the figures are then noisy, so the checks are on
structure and sanity: rates positive and finite, ratios what their parts give and in a
plausible range, parts of a step adding up to it, efficiency exactly 1 at one rank, the
markdown and PNG files written.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ptycl.bench import infer, scale, train
from ptycl.bench.steps import PART_NAMES, StepWorkload
from ptycl.commands.bench import SUITES
from ptycl.config import Config, load_config

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
TINY_MODEL = [
    "model.width=4",
    "model.depth=2",
    "train.store.capacity_samples=40",
    "train.device=cpu",
    "run.log_level=WARNING",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(None, TINY_MODEL)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The in-process suites compute with one thread, as each MPI rank does: on a loaded 2-core
    machine torch's default of a thread per core spends most of its time waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def assert_outputs(result: dict, out_dir: Path, suite: str) -> None:
    """JSON-ready, and the markdown table and non-empty PNG plots written."""
    assert json.loads(json.dumps(result))["suite"] == suite
    table = (out_dir / f"{suite}.md").read_text()
    assert table.count("|---") >= 1 and result["markdown"] == str(out_dir / f"{suite}.md")
    assert result["plots"]
    for plot in map(Path, result["plots"]):
        assert plot.stat().st_size > 0 and plot.read_bytes()[:8] == PNG_MAGIC


def test_suites_are_registered_with_quick_workloads():
    defaults = load_config(None, [])
    for suite in ("train", "scale", "infer"):
        assert callable(importlib.import_module(SUITES[suite]).run)
    quick = train.workload(defaults, quick=True)
    assert quick.frames == (64, 128) and quick.strategies == ("incremental", "derpp")
    assert quick.batch_size < defaults.train.batch_size and quick.steps_per_round == 1
    assert scale.workload(defaults, quick=True).ranks == (1, 2, 4)
    quick_infer = infer.workload(defaults, quick=True)
    assert quick_infer.frames == (64, 128, 256)
    assert all(n >= infer.MIN_FRAMES for n in quick_infer.frames_per_call.values())


def test_train_suite_rates_ratio_and_step_parts(config, tmp_path):
    work = StepWorkload(
        ("incremental", "derpp"), (64,), 4, 2, 1, 1, compiled_strategies=("incremental",)
    )
    result = train.run(config, tmp_path, quick=True, work=work, ranks=(1,))
    assert_outputs(result, tmp_path, "train")
    (job,) = result["jobs"]
    assert job["ranks"] == 1 and job["torch_threads_per_rank"] == 1
    variants = {v["strategy"]: v for v in job["variants"] if not v["compiled"]}
    (compiled,) = [v for v in job["variants"] if v["compiled"]]
    assert compiled["strategy"] == "incremental" and compiled["samples_per_step"] == 4
    (speedup,) = result["compiled_over_plain"]
    assert speedup["compiled_over_plain"] == pytest.approx(
        compiled["samples_per_s"] / variants["incremental"]["samples_per_s"]
    )
    # new and replayed samples alike: DER++ draws twice
    assert variants["incremental"]["samples_per_step"] == 4
    assert variants["derpp"]["samples_per_step"] == 4 + 2 * 2
    for v in variants.values():
        assert positive_finite(v["samples_per_s"])
        parts = v["seconds_per_step"]
        assert set(parts) == set(PART_NAMES)
        assert all(parts[p] >= 0 for p in PART_NAMES if p != "forward_backward")
        assert parts["forward_backward"] > 0 and parts["allreduce"] == 0  # one rank
        assert v["step_s"] == pytest.approx(sum(parts.values()))
    assert variants["incremental"]["seconds_per_step"]["replay_draw"] == 0
    assert variants["derpp"]["seconds_per_step"]["replay_draw"] > 0
    (ratio,) = result["ratios"]
    expected = variants["derpp"]["samples_per_s"] / variants["incremental"]["samples_per_s"]
    assert ratio["derpp_over_incremental"] == pytest.approx(expected)
    assert 0.05 < ratio["derpp_over_incremental"] < 20
    assert ratio["target"] == 0.95 and ratio["met"] == (expected >= 0.95)


def test_scale_limits_name_oversubscription():
    assert "oversubscribe" in scale.limits((1, 2, 4), cores=2)
    assert "0.50 at 4" in scale.limits((1, 2, 4), cores=2)
    assert "a core of its own" in scale.limits((1, 2, 4), cores=4)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')")
def test_scale_suite_efficiency(config, tmp_path):
    work = scale.ScaleWorkload((1, 2), 64, "derpp", 2, 1, launches=1, rounds=1, steps_per_round=1)
    result = scale.run(config, tmp_path, quick=True, work=work)
    assert_outputs(result, tmp_path, "scale")
    assert result["cpu_count"] == os.cpu_count() and "cores" in result["limits"]
    assert result["efficiency"]["1"] == 1.0  # by definition, exactly
    assert 0 < result["efficiency"]["2"] < 1.5
    points = {p["ranks"]: p for p in result["points"]}
    assert (points[1]["batch_size"], points[2]["batch_size"]) == (2, 4)  # weak scaling
    for p in points.values():
        assert positive_finite(p["samples_per_s"])
        assert p["samples_per_s_per_rank"] == pytest.approx(p["samples_per_s"] / p["ranks"])
    assert points[1]["seconds_per_step"]["allreduce"] == 0
    assert points[2]["seconds_per_step"]["allreduce"] > 0  # DDP's all-reduce, timed by its hook


def test_infer_suite_rates_and_target(config, tmp_path):
    work = infer.InferWorkload((64,), {64: 8}, batch_size=4, rounds=1)
    result = infer.run(config, tmp_path, quick=True, work=work)
    assert_outputs(result, tmp_path, "infer")
    (figures,) = result["figures"]
    rates = ("inference_frames_per_s", "stitching_patches_per_s", "end_to_end_frames_per_s")
    rates += ("compiled_inference_frames_per_s",)
    assert all(positive_finite(figures[k]) for k in rates)
    assert figures["stitching_over_inference"] == pytest.approx(
        figures["stitching_patches_per_s"] / figures["inference_frames_per_s"]
    )
    assert figures["compiled_over_plain_inference"] == pytest.approx(
        figures["compiled_inference_frames_per_s"] / figures["inference_frames_per_s"]
    )
    # end to end also reads, prepares and stitches: not much faster than inference alone
    assert 0 < figures["end_to_end_over_inference"] < 2
    target = result["target"]
    assert target["frames_per_s"] == 50_000 and target["measured_on"] == "cpu"
    assert target["met"] is None and "still to be measured" in target["status"]
    assert target["measured_frames_per_s"] is None  # 128² was not in this workload
