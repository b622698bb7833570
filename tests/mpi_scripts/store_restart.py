"""Edge cases, prefetch, and checkpoints of the distributed store, with real ranks.

Run under mpiexec, in two phases sharing DIR:

- ``python -m mpi4py store_restart.py save DIR`` with 4 ranks: empty store, an empty shard,
  unequal fill, draws larger than what is held, prefetched draws equal synchronous ones, an
  exact restore that continues identically; then writes every rank's shard to DIR.
- ``python -m mpi4py -rc thread_level=serialized store_restart.py reshard DIR`` with 2 ranks:
  the prefetch refuses the thread level, the 4-rank shards refuse load_state_dict and a store
  too small for them, and load_resharded restores the same global contents.

Every check is an assertion: a failure raises on its rank and mpi4py aborts the job.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mpi4py import MPI
from stream_samples import FRAME, check_intact, items, loss_of, stream_ids

from ptycl.rehearsal.distributed_store import DistributedRehearsalStore, shards_for_rank
from ptycl.rehearsal.errors import MPIThreadLevelError, StoreRestoreError
from ptycl.rehearsal.policies import POLICIES

COMM = MPI.COMM_WORLD
RANK, RANKS = COMM.rank, COMM.size
SAVED_RANKS = 4
PER_RANK = 4  # at 4 ranks: 16 slots
NOTHING = np.zeros(0, dtype=np.int64)


def empty_shards_and_unequal_fill() -> None:
    with DistributedRehearsalStore(COMM, PER_RANK, FRAME, prefetch=True, seed=1) as store:
        assert store.draw(5) is None  # nothing offered yet, on any rank
        store.offer(items(NOTHING))  # every rank offers nothing
        assert store.draw(5) is None and len(store) == 0
        # One sample, from the last rank: slot 0 is on rank 0, every other shard stays empty.
        store.offer(items(np.array([42]) if RANK == RANKS - 1 else NOTHING))
        assert COMM.allgather(store.held_here) == [1, 0, 0, 0]
        assert check_intact(store.draw(5)).tolist() == [42]  # more than held, on every rank
        store.offer(items(np.arange(100, 105) if RANK == 0 else NOTHING))
        assert COMM.allgather(store.held_here) == [2, 2, 1, 1]  # ranks of different fill
        assert sorted(check_intact(store.draw(100))) == [42, 100, 101, 102, 103, 104]


def stream(
    store: DistributedRehearsalStore,
    sizes: np.ndarray,
    steps: range,
    draw_sizes: Callable[[int], list[int]],
) -> list[Any]:
    """Train-loop order per step: the draws, then the offer. Returns every draw's ids."""
    drawn = []
    for step in steps:
        for n in draw_sizes(step):
            samples = store.draw(n)
            drawn.append(None if samples is None else check_intact(samples).tolist())
        ids = stream_ids(sizes, step, RANK)
        store.offer(items(ids, scans=step // 4), loss_of(ids))
    return drawn


def uneven_sizes(seed: int, steps: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 6, size=(steps, RANKS)) * (rng.random((steps, RANKS)) < 0.8)


def prefetch_changes_no_draw() -> None:
    sizes = uneven_sizes(11, 14)

    def draw_sizes(step: int) -> list[int]:
        # DER++'s two draws a step, sizes differing by rank, then one larger draw a step.
        return [2 + RANK, 3] if step < 8 else [20]

    drawn = {}
    for prefetch in (False, True):
        with DistributedRehearsalStore(COMM, PER_RANK, FRAME, prefetch=prefetch, seed=2) as store:
            drawn[prefetch] = stream(store, sizes, range(14), draw_sizes)
    assert drawn[True] == drawn[False], "prefetched draws differ from synchronous ones"


def assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {a.keys()} vs {b.keys()}"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):  # e.g. the packed rows' blocks
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def restore_exactly(directory: Path) -> None:
    sizes = uneven_sizes(12, 24)
    expected = {}
    for policy in POLICIES:
        original = DistributedRehearsalStore(
            COMM, PER_RANK, FRAME, policy=policy, prefetch=True, seed=3
        )
        stream(original, sizes, range(12), lambda step: [3, 3])
        saved = original.state_dict()  # taken with draws prefetched and pending
        torch.save(saved, directory / f"mid-{policy}-{RANK}.pt")
        restored = DistributedRehearsalStore(
            COMM, PER_RANK, FRAME, policy=policy, prefetch=True, seed=3
        )
        restored.load_state_dict(
            torch.load(directory / f"mid-{policy}-{RANK}.pt", weights_only=True)
        )
        assert_same_state(restored.state_dict(), saved)
        continued = [
            stream(store, sizes, range(12, 24), lambda step: [3, 3])
            for store in (original, restored)
        ]
        assert continued[0] == continued[1], f"{policy}: the restored store draws differently"
        assert_same_state(restored.state_dict(), original.state_dict())
        torch.save(original.state_dict(), directory / f"{policy}-{RANK}.pt")
        held = check_intact(
            original.draw(original.capacity)
        ).tolist()  # every held sample, in slot order
        expected[policy] = {"held": held, "seen": original.seen, "capacity": original.capacity}
        original.close()
        restored.close()
    if RANK == 0:
        (directory / "expected.json").write_text(json.dumps(expected))


def refuses(call: Callable[[], object], error: type[Exception], *phrases: str) -> None:
    try:
        call()
    except error as exc:
        assert all(p in str(exc) for p in phrases), f"unclear error: {exc}"
        return
    raise AssertionError(f"expected {error.__name__} mentioning {phrases}")


def reshard(directory: Path) -> None:
    refuses(
        lambda: DistributedRehearsalStore(COMM, PER_RANK, FRAME, prefetch=True),
        MPIThreadLevelError,
        "MPI_THREAD_MULTIPLE",
        "MPI_THREAD_SERIALIZED",
        "prefetch",
    )
    expected = json.loads((directory / "expected.json").read_text())
    mine = shards_for_rank(SAVED_RANKS, RANK, RANKS)
    for policy in POLICIES:
        shards = [torch.load(directory / f"{policy}-{k}.pt", weights_only=True) for k in mine]
        with DistributedRehearsalStore(
            COMM, PER_RANK, FRAME, policy=policy, prefetch=False
        ) as too_small:
            refuses(
                partial(too_small.load_state_dict, shards[0]),
                StoreRestoreError,
                "4 shards",
                "2 ranks",
                "load_resharded",
            )
            refuses(
                partial(too_small.load_resharded, shards),
                StoreRestoreError,
                "needs 8 rows",
                "4 per rank",
            )
        with DistributedRehearsalStore(
            COMM, 2 * PER_RANK, FRAME, policy=policy, prefetch=False
        ) as store:
            store.load_resharded(shards)
            want = expected[policy]
            assert (store.seen, store.capacity, len(store)) == (
                want["seen"],
                want["capacity"],
                len(want["held"]),
            )
            assert check_intact(store.draw(store.capacity)).tolist() == want["held"], (
                f"{policy}: contents moved"
            )
            stream(store, uneven_sizes(13, 6), range(6), lambda step: [4])  # and the stream goes on
            assert len(store) == store.capacity == want["capacity"]
            store.check_replicas()


def main() -> None:
    phase, directory = sys.argv[1], Path(sys.argv[2])
    if phase == "save":
        assert RANKS == SAVED_RANKS
        empty_shards_and_unequal_fill()
        prefetch_changes_no_draw()
        restore_exactly(directory)
    else:
        assert RANKS == 2
        reshard(directory)
    COMM.Barrier()
    if RANK == 0:
        print(f"{phase}: ok", flush=True)


if __name__ == "__main__":
    main()
