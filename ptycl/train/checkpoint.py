"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (no
pickled objects), so ``torch.load(weights_only=True)`` reads it and a checkpoint from an
untrusted place cannot run code. It is written to a temporary file in the same directory,
fsynced, then renamed over ``latest.pt``: a crash mid-write leaves the previous checkpoint.

A data-parallel run (several ranks) writes, in this order:

1. every rank its rehearsal-store shard, ``store-step{S}-rank{r}.pt`` (S: the global step);
2. rank 0 ``latest.pt``: the model, optimiser and the rest, with the number of ranks and S;
3. every rank removes its shards of other steps.

``latest.pt`` is the commit point: a job killed at any moment leaves a ``latest.pt`` whose
shards are all on disk. The checkpoint directory must be one that every rank sees (a shared
filesystem on a cluster).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ptycl.errors import CheckpointError
from ptycl.train.distributed import Distributed

LATEST = "latest.pt"


def _save_atomically(target: Path, state: dict[str, Any]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    directory_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)
    return target


def _load(path: Path, missing: str) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(path, missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for torn or foreign files
        raise CheckpointError(
            path, f"unreadable checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from None


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    return _save_atomically(directory / LATEST, state)


def load_checkpoint(directory: Path) -> dict[str, Any]:
    return _load(directory / LATEST, "no checkpoint to resume from")


def store_shard_path(directory: Path, step: int, rank: int) -> Path:
    return directory / f"store-step{step}-rank{rank}.pt"


def save_run_checkpoint(directory: Path, state: dict[str, Any], dist: Distributed) -> None:
    """Save a run's ``state`` (its "trainer" entry a ``ContinualTrainer.state_dict()``).

    Collective in a data-parallel job: each rank's store shard goes to its own file, the rest
    (the same on every rank) to rank 0's ``latest.pt``, as the module docstring describes.
    """
    ranks = dist.world_size
    if ranks == 1:
        save_checkpoint(directory, {**state, "ranks": 1})
        return
    step = state["trainer"]["position"][2]
    shard = state["trainer"]["store"]
    if shard is not None:
        _save_atomically(store_shard_path(directory, step, dist.rank), shard)
    dist.barrier()  # every shard is on disk before latest.pt names them
    if dist.is_main:
        trainer = {**state["trainer"], "store": None}
        save_checkpoint(
            directory,
            {**state, "trainer": trainer, "ranks": ranks, "sharded_store": shard is not None},
        )
    dist.barrier()  # latest.pt names the new shards: the old ones can go
    current = store_shard_path(directory, step, dist.rank)
    for old in directory.glob(f"store-step*-rank{dist.rank}.pt"):
        if old != current:
            old.unlink(missing_ok=True)


def load_run_checkpoint(
    directory: Path, dist: Distributed
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The state ``save_run_checkpoint`` saved, for this rank of this job.

    With as many ranks as the saving job, state["trainer"]["store"] is this rank's shard and
    the second value is None. With a different number (both above one), the second value is
    the list of old shards this rank takes over (``shards_for_rank``), for the store to
    redistribute. A single-process store and a sharded one do not convert into each other:
    that refuses with the rank counts to use.
    """
    state = load_checkpoint(directory)
    saved_ranks = int(state.get("ranks", 1))
    sharded = bool(state.get("sharded_store", False))
    has_store = sharded or state["trainer"]["store"] is not None
    if not has_store or saved_ranks == dist.world_size == 1:
        return state, None
    if (saved_ranks == 1) != (dist.world_size == 1):
        same = "1 rank (no mpiexec)" if saved_ranks == 1 else f"mpiexec -n {saved_ranks}"
        raise CheckpointError(
            directory / LATEST,
            f"the rehearsal store was saved by {saved_ranks} rank(s) and this job has "
            f"{dist.world_size}: a single-process store and an MPI-sharded one do not convert "
            f"into each other; resume with {same}",
        )
    step = state["trainer"]["position"][2]
    if saved_ranks == dist.world_size:
        state["trainer"]["store"] = _load(
            store_shard_path(directory, step, dist.rank),
            f"the store shard of rank {dist.rank} named by {LATEST} is missing",
        )
        return state, None
    from ptycl.rehearsal.distributed_store import shards_for_rank  # imports MPI

    shards = [
        _load(
            store_shard_path(directory, step, old_rank),
            f"the store shard of old rank {old_rank} named by {LATEST} is missing",
        )
        for old_rank in shards_for_rank(saved_ranks, dist.rank, dist.world_size)
    ]
    return state, shards
