"""Data-parallel continual training with real MPI ranks: ``mpiexec -n N python -m ptycl train``.

Every run is a subprocess under a timeout (the least flaky way on a 2-core box),
on the tiny simulated scans. What is checked:

- 2 ranks train one model: the replicas end identical, rank 0 alone writes the outputs, each
  rank writes its store shard, and the run learns like the 1-rank run with the same total batch
  (incremental: the same numbers up to float summation order, uneven shares included; DER++:
  close, its replay draws are different random samples of the same store);
- a 2-rank run stopped mid-scan and resumed on 2 ranks ends bit for bit where an uninterrupted
  one does; resumed on 3 ranks, the store is redistributed; resumed on 1, it refuses clearly;
- one rank failing ends the whole job quickly, with one line naming the rank and the error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ptycl.config import dump_config
from ptycl.errors import CheckpointError
from ptycl.lifecycle.checkpoint import load_checkpoint
from ptycl.train.run import run_continual
from tests.conftest import tiny_config
from tests.helpers_report import evaluated, read_matrices

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
TRAIN_CLI = Path(__file__).parent / "mpi_scripts" / "train_cli.py"

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')"),
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The 1-rank runs in this process compute like each MPI rank does, with one thread: on a
    loaded 2-core machine, torch's default of a thread per core spends most steps waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mpi_train(
    ranks: int,
    config_file: Path,
    *args: str,
    script: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m ptycl train -c config_file ARGS`` (or ``script``)."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
        # MPICH spins while it waits; on a loaded 2-core box a spinning rank holds the core its
        # peer needs. Sleeping instead keeps the ranks moving.
        "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
        **(env or {}),
    }
    entry = [str(script)] if script else ["-m", "ptycl"]
    command = [MPIEXEC, "-n", str(ranks), sys.executable, *entry, "train", "-c", str(config_file)]
    process = subprocess.Popen(
        [*command, *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a hung job can be killed whole
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} hung for {timeout} s:\n{stderr[-4000:]}")
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{stderr[-4000:]}"
    return done


def write_config(scans: Path, output_dir: Path, *overrides: str) -> Path:
    """A tiny run's YAML file (at INFO, so the logs can be checked)."""
    config = tiny_config(scans, output_dir, "run.log_level=INFO", *overrides)
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config))
    return path


@pytest.fixture(scope="module")
def two_rank_run(tiny_scans, tmp_path_factory) -> tuple[Path, Path, str]:
    """An uninterrupted DER++ run on 2 ranks; each rank's final model saved beside it."""
    root = tmp_path_factory.mktemp("two-ranks")
    output = root / "straight"
    config_file = write_config(tiny_scans, output, "train.strategy=derpp")
    models = root / "models"
    models.mkdir()
    done = mpi_train(2, config_file, script=TRAIN_CLI, env={"PTYCL_TEST_PARAMS_DIR": str(models)})
    return output, models, done.stderr


def test_two_ranks_train_one_model_like_one_rank(two_rank_run, tiny_scans, tmp_path):
    output, models, log = two_rank_run
    # Rank 0 writes the outputs and logs the story once; each rank checkpoints its store shard.
    assert log.count("derpp on 2 ranks: 3 scans") == 1
    assert "[rank 1]" not in log
    report = json.loads((output / "metrics.json").read_text())
    assert report["ranks"] == 2 and len(report["scan_ids"]) == 3
    checkpoint = load_checkpoint(output / "checkpoints")
    assert checkpoint["ranks"] == 2 and checkpoint["trainer"]["position"] == [3, 0, 18]
    # The shards of the checkpoints kept (train.keep_checkpoints: 3), one at each scan's end.
    shards = {p.name for p in (output / "checkpoints").glob("store-*.pt")}
    assert shards == {f"store-step{s}-rank{r}of2.pt" for s in (6, 12, 18) for r in (0, 1)}
    # One model: both replicas end with the same weights bit for bit, rank 0's checkpointed.
    rank0 = torch.load(models / "model-rank0.pt", weights_only=True)
    rank1 = torch.load(models / "model-rank1.pt", weights_only=True)
    for name, tensor in checkpoint["trainer"]["model"].items():
        assert torch.equal(rank0[name], tensor) and torch.equal(rank1[name], tensor), name

    # The same total batch on 1 rank: the same samples per scan, a close error matrix. Not
    # equal: the 2-rank store draws each rank's share of the replay batch with its own
    # generator, so other samples are replayed, which moves the errors by up to 5.5% here
    # (measured; 0.021 rad on a phase error of 0.37), hence 10%.
    single = run_continual(tiny_config(tiny_scans, tmp_path, "train.strategy=derpp"))
    assert [c["samples"] for c in report["costs"]] == [c["samples"] for c in single.costs]
    matrices = read_matrices(output)
    for metric in ("phase_mae", "amplitude_mae"):
        assert evaluated(matrices[metric]) == pytest.approx(
            evaluated(single.matrix(metric)), rel=0.1
        ), metric


def test_ranks_split_each_batch_into_exact_shares(tiny_scans, tmp_path):
    """Without replay the 2-rank run is the 1-rank run: a batch of 7 rows is shared 4 + 3, each
    rank's mean weighted so DDP's average is the 7-row mean. Only the float summation order
    differs, hence the tolerances."""
    first_two = ", ".join(str(path) for path in sorted(tiny_scans.glob("*.h5"))[:2])
    overrides = ("train.strategy=incremental", "train.batch_size=7", f"scans=[{first_two}]")
    config_file = write_config(tiny_scans, tmp_path / "two", *overrides)
    mpi_train(2, config_file)
    single = run_continual(tiny_config(tiny_scans, tmp_path / "one", *overrides))
    two = read_matrices(tmp_path / "two")
    for metric in ("phase_mae", "amplitude_mae"):
        assert evaluated(two[metric]) == pytest.approx(
            evaluated(single.matrix(metric)), rel=1e-4
        ), metric
    a = load_checkpoint(tmp_path / "one" / "checkpoints")["trainer"]["model"]
    b = load_checkpoint(tmp_path / "two" / "checkpoints")["trainer"]["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def interrupted_run(tiny_scans, tmp_path_factory) -> tuple[Path, Path]:
    """A DER++ run on 2 ranks stopped by --max-steps in the middle of scan 1, and a copy."""
    root = tmp_path_factory.mktemp("interrupted")
    config_file = write_config(tiny_scans, root / "run", "train.strategy=derpp")
    done = mpi_train(2, config_file, "--max-steps", "9")
    assert "stopped (--max-steps 9) at scan 1 step 3" in done.stderr
    checkpoints = root / "run" / "checkpoints"
    assert load_checkpoint(checkpoints)["trainer"]["position"] == [1, 3, 9]
    assert {p.name for p in checkpoints.glob("store-*.pt")} == {
        f"store-step{s}-rank{r}of2.pt" for s in (6, 9) for r in (0, 1)
    }
    saved = root / "saved-checkpoints"
    shutil.copytree(checkpoints, saved)
    return config_file, saved


def test_resume_on_two_ranks_continues_exactly(two_rank_run, interrupted_run):
    straight, _, _ = two_rank_run
    config_file, _ = interrupted_run
    mpi_train(2, config_file, "--resume")
    resumed = config_file.parent / "run"
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    # The weights must match bit for bit; evaluations to float32 summation order (as in
    # test_train_continual's resume test).
    matrices_a, matrices_b = read_matrices(straight), read_matrices(resumed)
    for metric, matrix in matrices_a.items():
        assert evaluated(matrices_b[metric]) == pytest.approx(evaluated(matrix), rel=1e-6), metric
    assert [c["samples"] for c in b["costs"]] == [c["samples"] for c in a["costs"]]
    model_a = load_checkpoint(straight / "checkpoints")["trainer"]["model"]
    model_b = load_checkpoint(resumed / "checkpoints")["trainer"]["model"]
    for name, tensor in model_a.items():
        assert torch.equal(tensor, model_b[name]), name
    for rank in (0, 1):
        shard_a = torch.load(
            straight / f"checkpoints/store-step18-rank{rank}of2.pt", weights_only=True
        )
        shard_b = torch.load(
            resumed / f"checkpoints/store-step18-rank{rank}of2.pt", weights_only=True
        )
        assert torch.equal(shard_a["rows"], shard_b["rows"])
        assert shard_a["table"]["seen"] == shard_b["table"]["seen"]


def test_resume_on_another_number_of_ranks(interrupted_run, tiny_scans, tmp_path):
    """3 ranks take over the 2 shards (the store redistributes them); 1 rank refuses clearly."""
    _, saved = interrupted_run
    on_three = tmp_path / "three"
    shutil.copytree(saved, on_three / "checkpoints")
    config_three = write_config(tiny_scans, on_three, "train.strategy=derpp")
    # Stopped before its first step, the 3-rank job checkpoints at the same step 9: its shards
    # hold other rows than the 2 ranks' and take other names, so both checkpoints stay whole.
    stopped_at_once = tmp_path / "stopped-at-once"
    shutil.copytree(saved, stopped_at_once / "checkpoints")
    config_stopped = write_config(tiny_scans, stopped_at_once, "train.strategy=derpp")
    mpi_train(3, config_stopped, "--resume", "--max-steps", "9")
    kept = stopped_at_once / "checkpoints"
    assert {p.name for p in kept.glob("store-step9-*.pt")} == {
        *(f"store-step9-rank{r}of2.pt" for r in range(2)),
        *(f"store-step9-rank{r}of3.pt" for r in range(3)),
    }
    for manifest in sorted(kept.glob("checkpoint-*.json"))[-2:]:  # the 2 ranks' and the 3's
        for name, digest in json.loads(manifest.read_text())["files"].items():
            assert (kept / name).stat().st_size == digest["size"], name
    done = mpi_train(3, config_three, "--resume")
    assert "saved by 2 rank(s), now 3" in done.stderr
    # The last 3 checkpoints: the 2 ranks' one at step 9, the 3 ranks' at steps 12 and 18.
    shards = {p.name for p in (on_three / "checkpoints").glob("store-*.pt")}
    assert shards == {"store-step9-rank0of2.pt", "store-step9-rank1of2.pt"} | {
        f"store-step{s}-rank{r}of3.pt" for s in (12, 18) for r in range(3)
    }
    report = json.loads((on_three / "metrics.json").read_text())
    assert report["ranks"] == 3 and len(report["scan_ids"]) == 3

    on_one = tmp_path / "one"
    shutil.copytree(saved, on_one / "checkpoints")
    config = tiny_config(tiny_scans, on_one, "train.strategy=derpp")
    with pytest.raises(CheckpointError, match=r"saved by 2 rank\(s\).*mpiexec -n 2"):
        run_continual(config, resume=True)


def test_a_failing_rank_ends_the_job_with_one_line(tiny_scans, tmp_path):
    config_file = write_config(tiny_scans, tmp_path / "run", "train.strategy=derpp")
    started = time.monotonic()
    done = mpi_train(
        2,
        config_file,
        script=TRAIN_CLI,
        env={"PTYCL_TEST_FAIL_RANK": "1", "PTYCL_TEST_FAIL_AT": "5"},
        timeout=90,
        check=False,
    )
    assert done.returncode != 0
    line = "ptycl: error: rank 1 of 2: RuntimeError: injected failure in training forward pass 5"
    assert line in done.stderr.splitlines(), done.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / "metrics.json").exists()
