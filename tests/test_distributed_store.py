"""The MPI-distributed rehearsal store, with real ranks; and the policies both stores share.

Each MPI test runs a script of tests/mpi_scripts under ``mpiexec -n N python -m mpi4py`` as
a subprocess with a timeout (the least flaky way on a 2-core box): an exception
on any rank aborts the whole job, so the exact checks are asserted in the scripts and the
statistics are computed here from the counts they write. Chi-square tests use fixed seeds
and reject at p < 0.001.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from ptycl.rehearsal.local_store import LocalReservoirStore
from ptycl.rehearsal.samples import ReplaySamples

P_REJECT = 0.001
SCRIPTS = Path(__file__).parent / "mpi_scripts"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")

needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')"
)


def run_ranks(
    ranks: int, script: str, *args: str, thread_level: str | None = None, timeout: float = 120
) -> str:
    """Run ``script`` on ``ranks`` MPI ranks; return rank output, fail with the ranks' stderr."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if ranks > (os.cpu_count() or 1):
        # MPICH spins while it waits; with more ranks than cores a spinning rank holds the core
        # its peer needs. Sleeping instead makes oversubscribed collectives ~6x faster here.
        env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    rc = ["-rc", f"thread_level={thread_level}"] if thread_level else []
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", *rc, script, *args]
    done = subprocess.run(
        command, cwd=SCRIPTS, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{script} on {ranks} ranks failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def inclusion_p_value(counts: np.ndarray, trials: int, sample_size: int) -> float:
    """p-value of "each of N items is in a trial's sample with probability sample_size/N".

    Each trial picks exactly ``sample_size`` distinct items, so the counts are not
    multinomial: their covariance is c (I - J/N) with c = T p (1-p) N/(N-1), and
    sum((O-E)^2)/c is chi-square with N-1 degrees of freedom (as in test_kernels).
    """
    n_items = counts.size
    p = sample_size / n_items
    c = trials * p * (1 - p) * n_items / (n_items - 1)
    statistic = float(np.sum((counts - trials * p) ** 2) / c)
    return float(chi2.sf(statistic, n_items - 1))


@pytest.mark.slow
@pytest.mark.mpi
@needs_mpiexec
@pytest.mark.parametrize(("ranks", "trials"), [(2, 400), (4, 200)])
def test_insertion_and_draws_are_uniform_over_all_ranks(tmp_path, ranks, trials):
    """Insertion: after a stream offered unevenly (zero rows included) by every rank, each item
    is held with probability capacity / seen. Draws: any rank's draw is uniform over the
    samples held on all ranks. The script also asserts, trial by trial and for every policy,
    that the global store holds exactly what the single-process store holds when fed the
    global stream in rank order."""
    out = tmp_path / "counts.json"
    run_ranks(ranks, "store_uniformity.py", str(out), str(trials))
    result = json.loads(out.read_text())
    for part in ("insertion", "draws"):
        counts = np.array(result[part]["counts"])
        p_value = inclusion_p_value(counts, result[part]["trials"], result[part]["sample_size"])
        assert p_value > P_REJECT, (
            f"{part} not uniform on {ranks} ranks: p={p_value:.2g}, counts={counts}"
        )


@pytest.fixture(scope="module")
def saved_shards(tmp_path_factory) -> tuple[Path, str]:
    """Edge cases, prefetch and exact restore on 4 ranks; their shards, saved, for resharding."""
    directory = tmp_path_factory.mktemp("shards")
    return directory, run_ranks(4, "store_restart.py", "save", str(directory))


@pytest.mark.slow
@pytest.mark.mpi
@needs_mpiexec
def test_empty_shards_unequal_fill_prefetch_and_exact_restore(saved_shards):
    """On 4 ranks (asserted in the script): draws before anything is held return None; one
    sample offered by rank 3 lands on rank 0 and every rank draws it (draw > held, empty
    shards); uneven fills; prefetched draws equal synchronous ones (ranks asking different
    sizes, DER++'s two draws a step, then a change of size); a restored shard equals the saved
    one and continues the stream exactly, for every policy, prefetch pending at the save."""
    directory, output = saved_shards
    assert "save: ok" in output
    assert len(list(directory.glob("reservoir-*.pt"))) == 4


@pytest.mark.slow
@pytest.mark.mpi
@needs_mpiexec
def test_restart_on_fewer_ranks_refuses_or_redistributes(saved_shards):
    """On 2 ranks under MPI_THREAD_SERIALIZED: prefetch refuses the thread level; the 4-rank
    shards refuse load_state_dict (naming both rank counts) and a store too small for them;
    load_resharded restores the same global contents, slot by slot, and the stream goes on."""
    directory, _ = saved_shards
    assert "reshard: ok" in run_ranks(
        2, "store_restart.py", "reshard", str(directory), thread_level="serialized"
    )


# ---- the policies, in one process (the MPI tests check the distributed store equals this) ----


def _scan_items(first: int, n: int, scan: int, size: int = 2) -> ReplaySamples:
    ident = torch.arange(first, first + n)
    return ReplaySamples(
        inputs=ident.float().view(n, 1, 1, 1).expand(n, 1, size, size).clone(),
        labels=torch.zeros(n, 2, size, size),
        outputs=torch.zeros(n, 2, size, size),
        scan_index=torch.full((n,), scan),
        step=ident,
    )


def test_balanced_policy_gives_every_scan_an_equal_share():
    store = LocalReservoirStore(30, (2, 2), policy="balanced", seed=0)
    first = 0
    for scan, length in enumerate([200, 40, 15, 120, 60]):  # long and short scans
        for start in range(0, length, 8):
            n = min(8, length - start)
            store.offer(_scan_items(first, n, scan))
            first += n
    held = store.draw(30).scan_index
    assert np.bincount(held.numpy()).tolist() == [6, 6, 6, 6, 6]


def test_loss_aware_policy_keeps_hard_samples_and_needs_losses():
    """Evicting ∝ 1/loss keeps a sample for a time ∝ its loss: with losses uniform on [0, 1]
    the held losses have density 2l, mean 2/3, where the reservoir's mean stays at 1/2."""
    mean_loss_held = {}
    for policy in ("loss_aware", "reservoir"):
        store = LocalReservoirStore(200, (2, 2), policy=policy, seed=0)
        generator = torch.Generator().manual_seed(0)
        for start in range(0, 6000, 50):
            losses = torch.rand(50, generator=generator)
            batch = _scan_items(start, 50, 0)
            batch.step = (losses * 1000).long()  # the loss, read back from what is held
            store.offer(batch, losses)
        mean_loss_held[policy] = store.draw(200).step.float().mean().item() / 1000
    assert mean_loss_held["loss_aware"] > 0.6 and mean_loss_held["reservoir"] < 0.56, mean_loss_held
    with pytest.raises(ValueError, match="losses"):
        store = LocalReservoirStore(8, (2, 2), policy="loss_aware")
        store.offer(_scan_items(0, 3, 0))


def test_policy_is_kept_in_the_checkpoint():
    store = LocalReservoirStore(8, (2, 2), policy="balanced")
    store.offer(_scan_items(0, 5, 0))
    with pytest.raises(ValueError, match="policy"):
        LocalReservoirStore(8, (2, 2)).load_state_dict(store.state_dict())
