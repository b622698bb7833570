"""Global uniformity of insertion and of draws; agreement with the single-process store.

Run under mpiexec: ``python -m mpi4py store_uniformity.py OUT_JSON TRIALS``. Rank 0 writes the
counts to OUT_JSON and the test computes the chi-square statistics; the exact checks (the
global store equals a LocalReservoirStore fed the global stream in rank order, for every
policy; drawn frames match their bookkeeping) are asserted here, so a failure aborts the job.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI
from stream_samples import check_intact, items, loss_of, stream_ids

from ptycl.rehearsal.distributed_store import DistributedRehearsalStore
from ptycl.rehearsal.local_store import LocalReservoirStore

COMM = MPI.COMM_WORLD
RANK, RANKS = COMM.rank, COMM.size
PER_RANK = 3  # slots per rank
ITEMS = 12 * RANKS  # items in each trial's stream
STEPS = 8
POLICY_TRIALS = 15  # trials comparing balanced and loss_aware with the local store
DRAWS, DRAW_SIZE = 150, 3


def random_sizes(rng: np.random.Generator) -> np.ndarray:
    """(steps, ranks) batch sizes summing to ITEMS: uneven, often zero."""
    return rng.multinomial(ITEMS, rng.dirichlet(np.full(STEPS * RANKS, 0.5))).reshape(STEPS, RANKS)


def stream_trial(trial: int, policy: str) -> np.ndarray:
    """Stream one trial through a distributed store and a local replica of the global
    stream; return the held ids in slot order after checking the two stores agree."""
    rng = np.random.default_rng(trial)  # same on every rank: every rank knows all sizes
    sizes = random_sizes(rng)
    store = DistributedRehearsalStore(
        COMM, PER_RANK, (2, 2), policy=policy, prefetch=False, seed=trial
    )
    reference = LocalReservoirStore(PER_RANK * RANKS, (2, 2), policy=policy, seed=trial)
    for step in range(STEPS):
        scan = step // 3  # scans of different lengths, for the balanced policy
        mine = stream_ids(sizes, step, RANK)
        store.offer(items(mine, scan), loss_of(mine))
        everyone = np.arange(
            int(sizes[:step].sum()), int(sizes[: step + 1].sum())
        )  # all ranks' ids, in rank order
        reference.offer(items(everyone, scan), loss_of(everyone))
    held = check_intact(store.draw(store.capacity))
    expected = reference.draw(reference.capacity).step.numpy()
    assert np.array_equal(held, expected), (
        f"{policy} trial {trial}: {held} held, local store holds {expected}"
    )
    assert COMM.allreduce(store.held_here) == len(store) == min(ITEMS, store.capacity)
    store.check_replicas()
    store.close()
    return held


def insertion_counts(trials: int) -> dict:
    counts = np.zeros(ITEMS, dtype=np.int64)
    for trial in range(trials):
        counts[stream_trial(trial, "reservoir")] += 1
    for policy in ("balanced", "loss_aware"):
        for trial in range(POLICY_TRIALS):
            stream_trial(10_000 + trial, policy)
    return {"counts": counts.tolist(), "trials": trials, "sample_size": PER_RANK * RANKS}


def draw_counts() -> dict:
    """Fill a store unevenly, then draw repeatedly (prefetched, with zero-row offers between)."""
    per_rank = 4
    sizes = (
        np.random.default_rng(7)
        .multinomial(3 * per_rank * RANKS, np.ones(RANKS * 2) / (RANKS * 2))
        .reshape(2, RANKS)
    )
    with DistributedRehearsalStore(COMM, per_rank, (2, 2), prefetch=True, seed=5) as store:
        for step in range(2):
            store.offer(items(stream_ids(sizes, step, RANK)))
        held_ids = check_intact(store.draw(store.capacity))
        counts = np.zeros(int(sizes.sum()), dtype=np.int64)
        for _ in range(DRAWS):
            store.offer(items(np.zeros(0, dtype=np.int64)))  # a step that offers nothing
            counts[check_intact(store.draw(DRAW_SIZE))] += 1
    total = COMM.reduce(counts, op=MPI.SUM, root=0)
    return {
        "counts": None if total is None else total[held_ids].tolist(),
        "trials": DRAWS * RANKS,
        "sample_size": DRAW_SIZE,
    }


def main() -> None:
    result = {
        "ranks": RANKS,
        "insertion": insertion_counts(int(sys.argv[2])),
        "draws": draw_counts(),
    }
    if RANK == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
