"""`ptycl bench continual`: the five strategies side by side, two at a time in worker
processes, stopped by a SIGTERM to the suite and resumed to the numbers of an unbroken suite."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.helpers_report import evaluated, read_matrices

pytestmark = pytest.mark.slow  # five strategies trained to the end, twice, in subprocesses

STEPS = 40  # long enough (cumulative: 40 + 80 + 120 steps) for a SIGTERM to land mid-run


def _bench(scans: Path, out: Path, *extra: str) -> list[str]:
    overrides = [
        *TINY,
        f"scans=[{scans}]",
        f"train.steps_per_scan={STEPS}",
        "train.checkpoint_every_steps=10",
        "train.device=cpu",
    ]
    settings = [arg for o in overrides for arg in ("--set", o)]
    command = [sys.executable, "-m", "ptycl", "bench", "continual", "--out", str(out)]
    return [*command, "--jobs", "2", *settings, *extra]


def _results(out: Path) -> dict:
    return json.loads((out / "continual.json").read_text())


@pytest.fixture(scope="module")
def unbroken(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-unbroken")
    subprocess.run(_bench(tiny_scans, out), check=True, capture_output=True, timeout=600)
    return out


def test_two_at_a_time_costs_and_criteria(unbroken):
    results = _results(unbroken)
    assert results["jobs"] == 2
    strategies = results["strategies"]
    assert list(strategies) == ["incremental", "cumulative", "er", "der", "derpp"]
    steps = {s: [c["steps"] for c in r["costs"]] for s, r in strategies.items()}
    assert steps["cumulative"] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert all(steps[s] == [STEPS] * 3 for s in ("incremental", "er", "der", "derpp"))
    samples = {s: [c["samples"] for c in r["costs"]] for s, r in strategies.items()}
    batch, replay = 8, 4  # TINY; derpp draws twice a step once the store holds samples
    assert samples["derpp"][1:] == [STEPS * (batch + 2 * replay)] * 2
    criteria = results["criteria"]
    ratio = criteria["derpp_last_scan_cost_over_cumulative"]["value"]
    assert ratio == pytest.approx(samples["derpp"][-1] / samples["cumulative"][-1])
    final = {s: r["summary"]["phase_mae"]["final_average_error"] for s, r in strategies.items()}
    assert criteria["derpp_phase_error_over_cumulative"]["value"] == pytest.approx(
        final["derpp"] / final["cumulative"]
    )
    plots = [Path(p) for p in results["plots"]]
    assert [p.name for p in plots] == [
        "cost_per_scan.png",  # samples: the cost the strategies differ in
        "time_per_scan.png",  # seconds, apart: they follow the machine's load
        "phase_mae_first_scans.png",  # the name `ptycl train` gives its own
    ]
    assert all(p.stat().st_size > 1000 for p in plots)


def test_a_suite_stopped_by_sigterm_resumes_to_the_unbroken_numbers(tiny_scans, tmp_path, unbroken):
    out = tmp_path / "bench"
    suite = subprocess.Popen(
        _bench(tiny_scans, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("continual/*/checkpoints/*.json")):
        assert suite.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    suite.send_signal(signal.SIGTERM)  # to the suite's process only: it tells its workers
    _, stderr = suite.communicate(timeout=300)
    assert suite.returncode == 2
    (error,) = [line for line in stderr.splitlines() if line.startswith("ptycl: error:")]
    assert "cumulative: SIGTERM" in error and "continue with --resume" in error
    assert "derpp: not begun" in error  # no strategy starts after the stop
    assert not (out / "continual.json").exists()

    resumed = subprocess.run(
        _bench(tiny_scans, out, "--resume"), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference, results = _results(unbroken)["strategies"], _results(out)["strategies"]
    for strategy, report in results.items():
        expected = reference[strategy]
        assert [c["samples"] for c in report["costs"]] == [
            c["samples"] for c in expected["costs"]
        ], strategy
        # Bit for bit in the weights; the evaluations to float32 summation order (see
        # test_train_continual's resume test).
        got = read_matrices(out / "continual" / strategy)
        want = read_matrices(unbroken / "continual" / strategy)
        for metric, matrix in want.items():
            assert evaluated(got[metric]) == pytest.approx(evaluated(matrix), rel=1e-6), (
                strategy,
                metric,
            )

    # Resumed once more, every strategy is read back from its last checkpoint: nothing trains.
    again = subprocess.run(
        _bench(tiny_scans, out, "--resume"), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    for strategy, report in _results(out)["strategies"].items():
        assert report["costs"] == results[strategy]["costs"], strategy


def test_a_refused_resume_ends_the_suite_with_the_reason_in_one_line(
    tiny_scans, tmp_path, unbroken
):
    out = tmp_path / "bench"
    shutil.copytree(unbroken, out, symlinks=True)
    refused = subprocess.run(
        _bench(tiny_scans, out, "--resume", "--set", "train.lr=0.01"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("ptycl: error:")]
    assert "--resume: train.lr: the run was trained with 0.001, this config has 0.01" in error
    assert error.split(": ")[2] in ("incremental", "cumulative")  # a strategy of the first two
    # nothing of the suite's runs was overwritten
    for strategy in ("incremental", "cumulative", "er", "der", "derpp"):
        for name in ("config.yaml", "metrics.json"):
            assert (out / "continual" / strategy / name).read_bytes() == (
                unbroken / "continual" / strategy / name
            ).read_bytes(), (strategy, name)
