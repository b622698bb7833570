"""Benchmark parts that run on several MPI ranks: launched under mpiexec, results as JSON.

The suite's own process never initialises MPI: it runs ``mpiexec -n N python -m mpi4py -m
MODULE PART OUT PARAMS`` as a subprocess, where MODULE ends with ``rank_main(PARTS)``; every
rank runs ``PARTS[PART](PARAMS)`` and rank 0 writes what it returns to OUT, which
``on_ranks`` reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Part = Callable[[dict[str, Any]], dict[str, Any]]


def mpiexec() -> str:
    """The launcher of the MPI mpi4py was installed with (the venv's first), else PATH's."""
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )
    if found is None:
        raise RuntimeError(
            "this ptycl bench part needs mpiexec: pip install 'ptycl[mpich]' or load the site MPI"
        )
    return found


def on_ranks(
    module: str,
    ranks: int,
    part: str,
    params: dict[str, Any],
    timeout: float,
    threads_per_rank: int | None = None,
) -> dict[str, Any]:
    """Rank 0's result of ``part`` of ``module`` run on ``ranks`` ranks.

    Each rank gets ``threads_per_rank`` torch threads (default: the cores shared out, at
    least one) and one Numba thread.
    """
    cores = os.cpu_count() or 1
    threads = threads_per_rank or max(1, cores // ranks)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": str(threads)}
    if ranks * threads > cores:
        # MPICH spins while it waits; with more threads than cores a spinning rank holds the
        # core its peer needs. Sleeping instead keeps the ranks moving.
        env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        command = [
            *(mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", module),
            *(part, str(out), json.dumps(params)),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"bench part {part} on {ranks} ranks failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def rank_main(parts: Mapping[str, Part]) -> None:
    """One rank of a part: ``python -m mpi4py -m MODULE PART OUT PARAMS``."""
    from mpi4py import MPI

    part, out_path, params = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    result = parts[part](params)
    if MPI.COMM_WORLD.rank == 0:
        out_path.write_text(json.dumps(result, indent=2))
