"""The watcher's sustained rate (``ptycl bench watch``): what ``ptycl watch`` keeps up with.

Design notes: docs/design.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptycl.bench.ranks import mpiexec
from ptycl.config import Config, dump_config
from ptycl.outputs import write_text
from ptycl.simulate.run import simulate_scans

log = logging.getLogger("ptycl.bench")

SIZES = (64, 128)
RANKS = (1, 2)
TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class WatchRate:
    frame_size: int
    ranks: int
    frames: int
    steps: int
    read_frames_per_s: float
    train_frames_per_s: float  # the sustained rate: frames per second of training
    seconds_per_step: float
    steps_per_frame: float
    wall_seconds: float  # watcher start to every scan trained (start-up included)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _all_trained(ledger_path: Path, n_scans: int) -> bool:
    ledger = _read_json(ledger_path) or {"scans": []}
    states = [scan["state"] for scan in ledger["scans"]]
    if any(state == "quarantined" for state in states):
        raise RuntimeError(f"bench watch: a scan was quarantined: {ledger_path}")
    return len(states) == n_scans and all(state == "trained" for state in states)


def _measure(config: Config, size: int, ranks: int, scratch: Path) -> WatchRate:
    scans_dir, run_dir = scratch / f"scans-{size}-{ranks}", scratch / f"run-{size}-{ranks}"
    settings = config.simulate.model_copy(
        update={"out_dir": scans_dir, "frame_size": size, "frame_rate_hz": None}
    )
    simulate_scans(settings)
    run_config = config.model_copy(
        update={
            "run": config.run.model_copy(update={"output_dir": run_dir, "log_level": "WARNING"}),
            "prep": config.prep.model_copy(update={"input_size": size}),
        }
    )
    config_path = scratch / f"watch-{size}-{ranks}.yaml"
    config_path.write_text(dump_config(run_config))
    launcher: list[str] = []
    if ranks > 1:
        launcher = [mpiexec(), "-n", str(ranks)]
    command = [*launcher, sys.executable, "-m", "ptycl", "watch", str(scans_dir)]
    command += ["-c", str(config_path), "--polling"]
    log_path = scratch / f"watch-{size}-{ranks}.log"
    started = time.monotonic()
    with open(log_path, "wb") as stderr:
        job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        while not _all_trained(run_dir / "ledger.json", settings.n_scans):
            if job.poll() is not None:
                raise RuntimeError(f"bench watch: the watcher exited:\n{log_path.read_text()}")
            if time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"bench watch: timed out:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        wall = time.monotonic() - started
        job.send_signal(signal.SIGTERM)  # a checkpoint, then status.json's final counters
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    counters = (_read_json(run_dir / "status.json") or {})["counters"]
    trained, steps = counters["frames_trained"], counters["steps"]
    return WatchRate(
        frame_size=size,
        ranks=ranks,
        frames=trained,
        steps=steps,
        read_frames_per_s=counters["frames_read"] / max(counters["read_seconds"], 1e-9),
        train_frames_per_s=trained / max(counters["train_seconds"], 1e-9),
        seconds_per_step=counters["train_seconds"] / max(steps, 1),
        steps_per_frame=steps / max(trained, 1),
        wall_seconds=wall,
    )


def _markdown(rates: list[WatchRate]) -> str:
    lines = [
        "| frame | ranks | frames | steps | read + prepare (frames/s) | training (frames/s sustained) | s/step | steps/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rates:
        lines.append(
            f"| {r.frame_size}² | {r.ranks} | {r.frames} | {r.steps} | {r.read_frames_per_s:,.0f} | "
            f"{r.train_frames_per_s:.2f} | {r.seconds_per_step:.2f} | {r.steps_per_frame:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(config: Config, out_dir: Path, quick: bool) -> dict[str, Any]:
    """``config`` is a watch configuration (``configs/watch-64.yaml``); its model, budget and
    segments are used as they are, at each frame size."""
    sizes, ranks = ((64,), (1,)) if quick else (SIZES, RANKS)
    frames = 64 if quick else config.watch.segment_frames  # one segment per scan
    config = config.model_copy(
        update={
            "simulate": config.simulate.model_copy(
                update={"n_scans": 1, "frames_per_scan": frames, "labels": "in_scan"}
            ),
            "prep": config.prep.model_copy(update={"holdout_fraction": 0.1}),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="watch-", dir=out_dir))
    rates: list[WatchRate] = []
    try:
        for size in sizes:
            for n in ranks:
                rate = _measure(config, size, n, scratch)
                log.info(
                    "watch %d² on %d rank(s): %.2f frames/s trained (%.2f s/step), read %.0f frames/s",
                    size,
                    n,
                    rate.train_frames_per_s,
                    rate.seconds_per_step,
                    rate.read_frames_per_s,
                )
                rates.append(rate)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = _markdown(rates)
    write_text(out_dir / "watch.md", table)
    print(table)
    return {
        "suite": "watch",
        "quick": quick,
        "workload": {
            "scans": 1,
            "frames_per_scan": frames,
            "model": config.model.model_dump(),
            "steps_per_scan": config.train.steps_per_scan,
            "nominal_frames_per_scan": config.watch.nominal_frames_per_scan,
            "batch": [config.train.batch_size, config.train.replay_batch_size],
            "strategy": config.train.strategy,
            "cores": os.cpu_count(),
        },
        "results": [asdict(r) for r in rates],
    }
