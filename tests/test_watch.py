"""Watch mode with real processes: a beamline writer streams scans into a directory while
``ptycl watch`` runs as a subprocess; SIGTERM stops it, ``--resume`` carries on.

Nothing is mocked: the writer, the watcher and the file systems' events are the real ones.
The end state is checked through what the watcher leaves on disk (ledger, checkpoint,
metrics, reconstructions, quarantine), and "no frame trained twice, none skipped" through
step counts: every trained scan's steps must be exactly the sum of its segments' budgets,
and the trainer's global step the sum over scans, however the run was interrupted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptycl.io.object_image import label_path_for, read_object_image, write_object_image
from ptycl.lifecycle.checkpoint import load_checkpoint, save_checkpoint
from ptycl.stream.evaluation_set import EvaluationReservoir
from ptycl.stream.ledger import Ledger, LedgerError, ScanRecord
from ptycl.stream.segments import segment_count, segment_steps
from tests.helpers_report import read_matrices
from tests.helpers_scans import BEAMLINE_SCANS, beamline_scan

HELPER = Path(__file__).with_name("helpers_scans.py")
REPO = HELPER.parent.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")

FRAMES = 32  # per scan
SEGMENT = 16  # frames per training segment: two segments per scan
STEPS_PER_SCAN = 4  # for a scan of NOMINAL frames: two steps per segment
NOMINAL = 32
# after the unlabelled scan's label arrives late (see the first test)
FINAL_STATES = {**BEAMLINE_SCANS, "scan0002_particles.h5": "trained"}
WATCH_CONFIG = {
    "run": {"log_level": "INFO", "seed": 0},
    "model": {"width": 4, "depth": 2},
    "prep": {"holdout_fraction": 0.25},
    "train": {
        "strategy": "derpp",
        "steps_per_scan": STEPS_PER_SCAN,
        "batch_size": 8,
        "replay_batch_size": 4,
        "checkpoint_every_steps": 0,
        "store": {"capacity_samples": 40},
    },
    "watch": {
        "segment_frames": SEGMENT,
        "nominal_frames_per_scan": NOMINAL,
        "label_wait_s": 1.0,
        "settle_s": 0.3,
        "unreadable_after_s": 2.0,
        "poll_interval_s": 0.1,
        "status_every_s": 0.3,
        "stall_timeout_s": 5.0,
        # one earlier scan per row: rows are sparse from the third trained scan on
        "evaluation_scans": 1,
    },
}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two cores for a watcher and a writer
    }


def _write_config(tmp_path: Path, output_dir: Path, **watch: object) -> Path:
    """WATCH_CONFIG writing to ``output_dir``, with ``watch`` settings changed."""
    config = json.loads(json.dumps(WATCH_CONFIG))
    config["run"]["output_dir"] = str(output_dir)
    config["watch"].update(watch)
    path = tmp_path / "watch.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _start_watcher(
    directory: Path, config: Path, *extra: str, log: Path, ranks: int = 1
) -> subprocess.Popen:
    """``ptycl watch`` in a process of its own, or under ``mpiexec -n ranks``."""
    launcher = [] if ranks == 1 else [MPIEXEC, "-n", str(ranks)]
    with open(log, "ab") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                *launcher,
                *(sys.executable, "-m", "ptycl", "watch", str(directory), "-c", str(config)),
                *extra,
            ],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _start_simulator(scans: Path, *settings: str) -> subprocess.Popen:
    """``ptycl simulate`` writing scans of FRAMES 64² frames into ``scans`` in real time."""
    simulate = [
        f"simulate.out_dir={scans}",
        f"simulate.frames_per_scan={FRAMES}",
        "simulate.frame_size=64",
        "simulate.frame_rate_hz=20",
        "simulate.labels=in_scan",
        *settings,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "ptycl", "simulate", *[a for s in simulate for a in ("--set", s)]],
        env=_env(),
        stderr=subprocess.PIPE,
    )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _wait_for(what: str, condition, watcher: subprocess.Popen, log: Path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if watcher.poll() is not None:
            pytest.fail(
                f"watcher exited ({watcher.returncode}) waiting for {what}:\n{log.read_text()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def _stop(watcher: subprocess.Popen, log: Path) -> None:
    watcher.send_signal(signal.SIGTERM)
    try:
        assert watcher.wait(timeout=90) == 0, log.read_text()
    except subprocess.TimeoutExpired:
        watcher.kill()
        pytest.fail(f"watcher did not stop on SIGTERM:\n{log.read_text()}")


def _kill_leftovers(*processes: subprocess.Popen | None) -> None:
    """After a test, however it ended: no watcher or writer outlives it."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()


def _states(output_dir: Path) -> dict[str, str]:
    ledger = _read_json(output_dir / "ledger.json")
    return {} if ledger is None else {s["name"]: s["state"] for s in ledger["scans"]}


def _owed_steps(frames_total: int) -> int:
    """The steps a scan's segments are owed, whatever the interruptions."""
    return sum(
        segment_steps(k * SEGMENT, min((k + 1) * SEGMENT, frames_total), STEPS_PER_SCAN, NOMINAL)
        for k in range(segment_count(frames_total, SEGMENT))
    )


def _check_evaluated_rows(
    output: Path, capacity: int = WATCH_CONFIG["watch"]["evaluation_scans"]
) -> None:
    """Row i of every error matrix holds scan i and the scans the evaluation set held before
    it: at most ``evaluation_scans`` + 1, and exactly the scans an uninterrupted run with the
    run's seed evaluates (the set's draws depend only on the seed and the scans offered, so
    replaying the offers is the uninterrupted run), however often the watcher was resumed."""
    matrices = read_matrices(output)
    uninterrupted = EvaluationReservoir(capacity, WATCH_CONFIG["run"]["seed"])
    for i in range(len(matrices["phase_mae"])):
        for name, matrix in matrices.items():
            evaluated = [j for j, v in enumerate(matrix[i]) if not math.isnan(v)]
            assert evaluated == [*uninterrupted.members, i], (name, i, matrix[i])
            assert len(evaluated) <= capacity + 1
        uninterrupted.offer(i)
    state = load_checkpoint(output / "checkpoints")["evaluation_set"]
    assert EvaluationReservoir.from_state(state).state_dict() == uninterrupted.state_dict()


def _frames_trained(output: Path) -> int:
    status = _read_json(output / "status.json") or {}
    return status.get("counters", {}).get("frames_trained", 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "ranks",
    [
        1,
        pytest.param(
            2,
            marks=[
                pytest.mark.mpi,
                pytest.mark.skipif(
                    MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')"
                ),
            ],
        ),
    ],
)
def test_watch_follows_trains_reconstructs_quarantines_then_resumes_idle(
    tmp_path: Path, ranks: int
):
    """A beamline writes five scans in real time (label inside, label arriving later, no label,
    a NaN frame, a truncated file) while ``ptycl watch`` runs on one process or on two MPI
    ranks; a late label for the reconstructed scan; SIGTERM; a restart trains nothing more."""
    scans, output = tmp_path / "beamline", tmp_path / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"

    watcher = _start_watcher(scans, config, log=log, ranks=ranks)
    writer = None
    try:
        _wait_for(
            "the watcher to start", lambda: (output / "status.json").exists(), watcher, log, 90
        )
        writer = subprocess.Popen(
            [sys.executable, str(HELPER), "beamline", str(scans), "--frames", str(FRAMES)],
            env=_env(),
            stderr=subprocess.PIPE,
        )
        _wait_for(
            "every scan to be accounted for",
            lambda: _states(output) == BEAMLINE_SCANS,
            watcher,
            log,
            120,
        )
        _, writer_err = writer.communicate(timeout=60)
        assert writer.returncode == 0, writer_err.decode()
        # The unlabelled scan's label comes after all, once it was reconstructed: the watcher
        # reads the scan again and trains on it.
        write_object_image(
            label_path_for(scans / "scan0002_particles.h5"), beamline_scan(2, FRAMES).truth
        )
        _wait_for(
            "the late label to be trained on",
            lambda: _states(output) == FINAL_STATES,
            watcher,
            log,
            90,
        )
        _stop(watcher, log)
        steps_before = load_checkpoint(output / "checkpoints")["trainer"]["position"][2]

        # A restart over the same directory: every scan is in the ledger, nothing trains again.
        restarted = time.time()
        watcher = _start_watcher(scans, config, "--resume", log=log, ranks=ranks)
        _wait_for(
            "the resumed watcher to look around",
            lambda: (
                (_read_json(output / "status.json") or {}).get("time", 0) > restarted
                and _read_json(output / "status.json")["uptime_s"] > 1.5
            ),
            watcher,
            log,
            90,
        )
        _stop(watcher, log)
    finally:
        _kill_leftovers(watcher, writer)

    # -- every scan exactly once, in the state it should be, for the reason it should be -----
    ledger = Ledger.read_json(output / "ledger.json")
    assert {name: r.state for name, r in ledger.scans.items()} == FINAL_STATES
    assert ledger.in_progress is None
    state = load_checkpoint(output / "checkpoints")
    assert Ledger.from_state(state["ledger"]).to_state() == ledger.to_state()
    assert state["trainer"]["position"][2] == steps_before  # the restart trained nothing
    trained = [r for r in ledger.scans.values() if r.state == "trained"]
    for record in trained:
        assert record.frames_total == record.frames_read == FRAMES
        assert record.frames_trained == FRAMES
        assert record.segments_trained == segment_count(FRAMES, SEGMENT)
        assert record.steps == _owed_steps(FRAMES), record
    assert steps_before == sum(r.steps for r in ledger.scans.values())
    assert ledger.scans["scan0000_manhattan.h5"].label == "in_scan"
    assert ledger.scans["scan0001_siemens.zarr"].label == "scan0001_siemens.label.h5"
    assert ledger.scans["scan0002_particles.h5"].label == "scan0002_particles.label.h5"
    reasons = {name: r.reason for name, r in ledger.scans.items() if r.state == "quarantined"}
    assert "NaN" in reasons["scan0003_nan.h5"]
    assert "truncated" in reasons["scan0004_truncated.h5"]

    # -- quarantined files set aside, with one line each ---------------------------------------
    for name in reasons:
        assert not (scans / name).exists() and (scans / "quarantine" / name).exists()
    lines = (output / "quarantine.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == sorted(reasons)

    # -- the unlabelled scan reconstructed beside itself ------------------------------------
    recon = ledger.scans["scan0002_particles.h5"].reconstruction
    assert recon == str(scans / "scan0002_particles.recon.h5")
    image = read_object_image(recon)
    assert image.values.size > 0 and math.isfinite(float(abs(image.values).max()))
    assert (scans / "scan0002_particles.recon.png").stat().st_size > 1000

    # -- metrics: the error matrices over the trained scans, finite ---------------------------
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["scan_ids"] == ["scan0000_manhattan", "scan0001_siemens", "scan0002_particles"]
    phase = read_matrices(output)["phase_mae"]
    assert all(0 <= v <= math.pi for row in phase for v in row if not math.isnan(v))
    _check_evaluated_rows(output)
    assert [c["steps"] for c in metrics["costs"]] == [r.steps for r in trained]
    assert (output / "plots" / "R_phase_offset_free_mae.png").exists()
    status = json.loads((output / "status.json").read_text())
    assert status["mode"] == "inotify" and status["scans"]["trained"] == 3
    text = log.read_text()
    assert "resumed:" in text and "Traceback" not in text


@pytest.mark.slow
def test_polling_mode_follows_a_scan_being_written_and_resumes_mid_scan(tmp_path: Path):
    scans, output = tmp_path / "nfs", tmp_path / "run"
    scans.mkdir()
    config = _write_config(tmp_path, output)
    log = tmp_path / "watch.log"
    watcher = _start_watcher(scans, config, "--polling", log=log)
    writer = None
    try:
        _wait_for(
            "the watcher to start", lambda: (output / "status.json").exists(), watcher, log, 90
        )
        writer = _start_simulator(
            scans, "simulate.n_scans=3", "simulate.families=[manhattan, siemens, particles]"
        )
        # Stop once training on the third scan is under way (the evaluation set has drawn
        # once), the writer perhaps still at it.
        _wait_for(
            "a trained segment of the third scan",
            lambda: _frames_trained(output) >= 2 * FRAMES + SEGMENT,
            watcher,
            log,
            90,
        )
        _stop(watcher, log)
        _, writer_err = writer.communicate(timeout=60)
        assert writer.returncode == 0, writer_err.decode()
        subprocess.run(  # 16x16 frames: not this run's 64x64 scans
            [
                sys.executable,
                str(HELPER),
                "write",
                str(scans / "scan0009_small.h5"),
                "--frames",
                "8",
            ],
            env=_env(),
            check=True,
            capture_output=True,
        )
        subprocess.run(  # a writer that dies before marking its scan complete
            [
                *(sys.executable, str(HELPER), "write", str(scans / "scan0010_dead.h5")),
                *("--frames", "8", "--size", "64", "--rate-hz", "1000", "--incomplete"),
            ],
            env=_env(),
            check=True,
            capture_output=True,
        )
        watcher = _start_watcher(scans, config, "--polling", "--resume", log=log)
        expected = {
            "scan0000_manhattan.h5": "trained",
            "scan0001_siemens.h5": "trained",
            "scan0002_particles.h5": "trained",
            "scan0009_small.h5": "quarantined",
            "scan0010_dead.h5": "quarantined",
        }
        _wait_for("both scans", lambda: _states(output) == expected, watcher, log, 90)
        _stop(watcher, log)
    finally:
        _kill_leftovers(watcher, writer)
    ledger = Ledger.read_json(output / "ledger.json")
    trained = [r for r in ledger.scans.values() if r.state == "trained"]
    # resumed where it stopped: no segment trained twice, none skipped
    for record in trained:
        assert record.frames_trained == FRAMES and record.steps == _owed_steps(FRAMES)
    state = load_checkpoint(output / "checkpoints")
    assert state["trainer"]["position"][2] == 3 * _owed_steps(FRAMES)
    # the resumed watcher evaluates the set an uninterrupted one would (reloaded from DIR)
    _check_evaluated_rows(output)
    assert "shape mismatch" in ledger.scans["scan0009_small.h5"].reason
    assert "stalled" in ledger.scans["scan0010_dead.h5"].reason
    status = json.loads((output / "status.json").read_text())
    assert status["mode"] == "polling"
    text = log.read_text()
    assert text.count("resumed:") == 1 and "Traceback" not in text


# -- the ledger alone ---------------------------------------------------------------------------


def test_ledger_moves_only_along_the_state_diagram() -> None:
    ledger = Ledger(segment_frames=16)
    ledger.add("a.h5", "a")
    assert ledger.move("a.h5", "training").task == 0
    with pytest.raises(LedgerError):
        ledger.move("a.h5", "reconstructed")
    ledger.move("a.h5", "trained")
    with pytest.raises(LedgerError):
        ledger.move("a.h5", "training")  # trained is final: never trained twice
    ledger.add("b.h5")
    ledger.move("b.h5", "reconstructed")
    assert ledger.move("b.h5", "training").task == 1  # a late label
    ledger.in_progress = ("b.h5", 2)
    ledger.quarantine("b.h5", "frame 3 has NaN counts")
    assert ledger.in_progress is None  # nothing left to resume in a quarantined scan
    ledger.quarantine("never-opened.h5", "truncated")
    with pytest.raises(LedgerError):
        ledger.add("a.h5")
    assert ledger.evaluated == ["a.h5"]
    assert ledger.counts() == {
        "seen": 0,
        "training": 0,
        "trained": 1,
        "reconstructed": 0,
        "quarantined": 2,
    }


def _sample_ledger() -> Ledger:
    ledger = Ledger(segment_frames=32, frame_shape=(64, 64))
    ledger.add("scan0.h5", "scan0")
    ledger.move("scan0.h5", "training")
    record = ledger.scans["scan0.h5"]
    record.frames_read, record.segments_trained, record.frames_trained, record.steps = 70, 2, 64, 9
    ledger.in_progress = ("scan0.h5", 2)
    ledger.quarantine("bad.zarr", "stalled")
    return ledger


def test_ledger_resumes_from_a_weights_only_checkpoint(tmp_path: Path) -> None:
    ledger = _sample_ledger()
    save_checkpoint(tmp_path, {"ledger": ledger.to_state()})
    restored = Ledger.from_state(load_checkpoint(tmp_path)["ledger"])  # weights_only=True
    assert restored == ledger
    assert restored.in_progress == ("scan0.h5", 2) and restored.frame_shape == (64, 64)
    assert restored.next_task == 1
    assert isinstance(restored.scans["scan0.h5"], ScanRecord)
    # a later record field it does not know is ignored; an unknown state is refused
    state = ledger.to_state()
    state["scans"][0]["from_the_future"] = 1
    assert Ledger.from_state(state).scans["scan0.h5"].steps == 9
    state["scans"][0]["state"] = "half-done"
    with pytest.raises(LedgerError):
        Ledger.from_state(state)


def test_ledger_json_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = _sample_ledger()
    ledger.write_json(path)
    before = path.read_text()
    assert Ledger.read_json(path) == ledger
    # A write that fails half-way (a value JSON cannot hold) leaves the old file whole and
    # no temporary behind.
    ledger.scans["scan0.h5"].first_seen = float("nan")
    with pytest.raises(ValueError):
        ledger.write_json(path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]
    # A successful write replaces it by rename: a reader holding the old file keeps it whole.
    with open(path) as held:
        ledger.scans["scan0.h5"].first_seen = 1.0
        ledger.scans["scan0.h5"].steps = 10
        ledger.write_json(path)
        assert held.read() == before
    assert Ledger.read_json(path).scans["scan0.h5"].steps == 10


KEEP_WRITING = """
import sys
from pathlib import Path
from ptycl.stream.ledger import Ledger
ledger = Ledger(segment_frames=16)
path = Path(sys.argv[1])
for n in range(10**9):
    ledger.add(f"scan{n:06d}.h5", "x" * 2000)  # a growing file, so writes take a while
    ledger.write_json(path)
"""


def test_ledger_json_survives_a_writer_killed_at_any_moment(tmp_path: Path) -> None:
    """A process rewriting the ledger is SIGKILLed mid-stream: the file always parses, and
    holds one of the versions it wrote in full."""
    path = tmp_path / "ledger.json"
    for delay_s in (0.6, 0.75, 0.9):
        child = subprocess.Popen([sys.executable, "-c", KEEP_WRITING, str(path)], env=_env())
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay_s)
        child.kill()
        child.wait()
        ledger = Ledger.read_json(path)
        names = sorted(ledger.scans)
        assert names == [f"scan{n:06d}.h5" for n in range(len(names))]
        path.unlink()


# -- training segments ---------------------------------------------------------------------------


def test_segments_cost_in_proportion_to_frames_whatever_the_cut() -> None:
    from ptycl.stream.segments import cumulative_steps, holdout_rows, segment_bounds

    # a nominal scan gets exactly the train budget; a longer one proportionally more
    for frames, cut in ((400, 128), (400, 50), (1000, 128), (37, 16)):
        owed = sum(
            segment_steps(k * cut, min((k + 1) * cut, frames), 150, 400)
            for k in range(segment_count(frames, cut))
        )
        assert owed == cumulative_steps(frames, 150, 400)
    assert cumulative_steps(400, 150, 400) == 150 and cumulative_steps(1000, 150, 400) == 375
    # with a budget too small to share out, every segment still gets a step
    assert [segment_steps(a, a + 16, 4, 400) for a in (0, 16, 32)] == [1, 1, 1]
    # ready when its frames are committed; the short last one only once the scan is complete
    assert segment_bounds(1, 16, 31, complete=False) is None
    assert segment_bounds(1, 16, 32, complete=False) == (16, 32)
    assert segment_bounds(2, 16, 40, complete=False) is None
    assert segment_bounds(2, 16, 40, complete=True) == (32, 40)
    assert segment_bounds(3, 16, 48, complete=True) is None
    # the held-out frames of a scan: the same on every call, a share of each segment
    train, held = holdout_rows(100, 32, 0.25, run_seed=3, task=1)
    again_train, again_held = holdout_rows(100, 32, 0.25, run_seed=3, task=1)
    assert held.tolist() == again_held.tolist() and train.tolist() == again_train.tolist()
    assert sorted(train.tolist() + held.tolist()) == list(range(100))
    assert [int(((held >= a) & (held < a + 32)).sum()) for a in (0, 32, 64, 96)] == [8, 8, 8, 1]


def test_dense_tables_and_plots_take_at_most_a_tenth_of_a_long_run() -> None:
    """After every scan while drawing them is quick; spaced by ten times the last drawing
    once it is not (they grow with the square of the scans: 9 s at 4,000 scans)."""
    from ptycl.stream.report_cadence import ReportCadence

    cadence = ReportCadence()
    assert cadence.due(0.0)
    cadence.drew(started=100.0, ended=100.05)  # a small run: 50 ms
    assert not cadence.due(100.2) and cadence.due(100.55)
    cadence.drew(started=5000.0, ended=5009.0)  # a long one: 9 s
    assert not cadence.due(5098.9) and cadence.due(5099.0)
    busy = 9.0 / (5099.0 - 5000.0)
    assert busy == pytest.approx(1 / 11)
