"""`ptycl bench continual`: the strategies side by side, two at a time in worker processes,
stopped by a SIGTERM to the suite and resumed to the numbers of an unbroken suite; over two
paired streams, the verdict with its intervals."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ptycl.bench.continual import STRATEGIES
from tests.conftest import TINY
from tests.helpers_report import evaluated, read_matrices

pytestmark = pytest.mark.slow  # five strategies trained to the end, twice, in subprocesses

STEPS = 40  # long enough (cumulative: 40 + 80 + 120 steps) for a SIGTERM to land mid-run
FIVE = ("incremental", "cumulative", "er", "der", "derpp")  # the suite's first five, cheapest


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
    return [*command, "--jobs", "2", "--strategies", ",".join(FIVE), *settings, *extra]


def _results(out: Path) -> dict:
    return json.loads((out / "continual.json").read_text())


@pytest.fixture(scope="module")
def unbroken(tiny_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-unbroken")
    subprocess.run(_bench(tiny_scans, out), check=True, capture_output=True, timeout=600)
    return out


def _runs(out: Path) -> dict:
    """The first stream's runs, by strategy."""
    return _results(out)["runs"][0]


def test_two_at_a_time_costs_and_criteria(unbroken):
    results = _results(unbroken)
    assert results["jobs"] == 2
    strategies = _runs(unbroken)
    assert list(strategies) == list(FIVE)
    steps = {s: [c["steps"] for c in r["costs"]] for s, r in strategies.items()}
    assert steps["cumulative"] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert all(steps[s] == [STEPS] * 3 for s in ("incremental", "er", "der", "derpp"))
    samples = {s: [c["samples"] for c in r["costs"]] for s, r in strategies.items()}
    batch, replay = 8, 4  # TINY; derpp draws twice a step once the store holds samples
    assert samples["derpp"][1:] == [STEPS * (batch + 2 * replay)] * 2
    criteria = {c["name"]: c for c in results["criteria"]}
    measured = criteria["derpp_vs_cumulative"]["measured"]
    assert measured["last_scan_cost_ratio"] == pytest.approx(
        samples["derpp"][-1] / samples["cumulative"][-1]
    )
    final = {
        s: r["summary"]["phase_offset_free_mae"]["final_average_error"]
        for s, r in strategies.items()
    }
    # one stream: the ratio is that stream's, with no interval
    assert measured["error_ratio"]["mean"] == pytest.approx(final["derpp"] / final["cumulative"])
    assert measured["error_ratio"]["low"] is None
    assert criteria["derpp_vs_cumulative"]["met"] is False  # no interval, no claim
    assert (unbroken / "continual" / "cost_per_scan.png").stat().st_size > 1000
    plots = [Path(p) for p in results["plots"]]
    assert {"cost_per_scan.png", "time_per_scan.png"} <= {p.name for p in plots}
    assert all(p.stat().st_size > 1000 for p in plots)


def test_a_suite_stopped_by_sigterm_resumes_to_the_unbroken_numbers(tiny_scans, tmp_path, unbroken):
    out = tmp_path / "bench"
    suite = subprocess.Popen(
        _bench(tiny_scans, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("continual/*/*/checkpoints/*.json")):
        assert suite.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    suite.send_signal(signal.SIGTERM)  # to the suite's process only: it tells its workers
    _, stderr = suite.communicate(timeout=300)
    assert suite.returncode == 2
    (error,) = [line for line in stderr.splitlines() if line.startswith("ptycl: error:")]
    assert "cumulative: SIGTERM" in error and "continue with --resume" in error
    assert "incremental: not begun" in error  # no strategy starts after the stop
    assert not (out / "continual.json").exists()

    resumed = subprocess.run(
        _bench(tiny_scans, out, "--resume"), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference, results = _runs(unbroken), _runs(out)
    for strategy, report in results.items():
        expected = reference[strategy]
        assert [c["samples"] for c in report["costs"]] == [
            c["samples"] for c in expected["costs"]
        ], strategy
        # Bit for bit in the weights; the evaluations to float32 summation order (see
        # test_train_continual's resume test).
        got = read_matrices(out / "continual" / "seed-0" / strategy)
        want = read_matrices(unbroken / "continual" / "seed-0" / strategy)
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
    for strategy, report in _runs(out).items():
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
    # a run of the first two
    assert error.split(": ")[2] in ("seed-0/incremental", "seed-0/cumulative")
    # nothing of the suite's runs was overwritten
    for strategy in FIVE:
        for name in ("config.yaml", "metrics.json"):
            assert (out / "continual" / "seed-0" / strategy / name).read_bytes() == (
                unbroken / "continual" / "seed-0" / strategy / name
            ).read_bytes(), (strategy, name)


@pytest.mark.slow
def test_paired_streams_give_every_comparison_an_interval(tmp_path):
    """Two streams of two scans each, simulated from two seeds: every strategy on both, the
    criteria read from the paired ratios."""
    out = tmp_path / "bench"
    overrides = [*TINY, "simulate.n_scans=2", f"simulate.out_dir={tmp_path / 'data'}"]
    command = [sys.executable, "-m", "ptycl", "bench", "continual", "--out", str(out)]
    command += ["--jobs", "2", "--seeds", "2", "--set", "train.device=cpu"]
    command += [arg for o in overrides for arg in ("--set", o)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = json.loads((out / "verdict.json").read_text())
    assert [s["simulate_seed"] for s in verdict["streams"]] == [0, 1]
    assert [s["run_seed"] for s in verdict["streams"]] == [0, 1]
    # the streams differ: their scans were simulated from different seeds
    constants = [
        json.loads((out / "continual" / f"seed-{k}" / "derpp" / "metrics.json").read_text())[
            "constants"
        ]
        for k in range(2)
    ]
    assert constants[0] != constants[1]
    runs = _results(out)["runs"]
    final = [
        {s: r["summary"]["phase_offset_free_mae"]["final_average_error"] for s, r in k.items()}
        for k in runs
    ]
    criteria = {c["name"]: c for c in verdict["criteria"]}
    ratio = criteria["derpp_vs_cumulative"]["measured"]["error_ratio"]
    logs = np.log([f["derpp"] / f["cumulative"] for f in final])
    low, high = stats.t.interval(0.95, 1, loc=logs.mean(), scale=stats.sem(logs))
    assert ratio["mean"] == pytest.approx(np.exp(logs.mean()))
    assert (ratio["low"], ratio["high"]) == pytest.approx((np.exp(low), np.exp(high)))
    assert criteria["derpp_vs_cumulative"]["met"] == (
        ratio["high"] <= 1.15
        and criteria["derpp_vs_cumulative"]["measured"]["last_scan_cost_ratio"] <= 1 / 3
        and criteria["derpp_vs_cumulative"]["measured"]["cost_per_scan_spread"] <= 0.05
    )
    table = verdict["strategies"]
    assert set(table) == {*STRATEGIES, "constant patch"}
    markdown = (out / "continual.md").read_text()
    assert "derpp_vs_cumulative" in markdown and "constant patch" in markdown
    assert "--seeds 2" in markdown  # the command that produced it
    assert (out / "continual" / "error_against_cost.png").stat().st_size > 1000
