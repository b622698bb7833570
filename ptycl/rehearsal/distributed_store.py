"""The MPI-distributed rehearsal store: one shard per rank, one uniform sample of the global stream.

Design notes: docs/design.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from ptycl.rehearsal import select
from ptycl.rehearsal.errors import StoreRestoreError
from ptycl.rehearsal.mpi_comm import (
    StoreComms,
    allgather_rows,
    alltoall_counts,
    exchange_rows,
    require_thread_level,
)
from ptycl.rehearsal.policies import POLICIES, Policy, decide, scores_samples
from ptycl.rehearsal.prefetch import DrawPrefetcher
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.shard import PayloadShard, pack, unpack
from ptycl.rehearsal.slot_table import Candidates, SlotTable, Writes
from ptycl.rehearsal.store import RehearsalStore


def shards_for_rank(old_ranks: int, rank: int, ranks: int) -> list[int]:
    """The old shards rank ``rank`` of ``ranks`` reads and passes to ``load_resharded``."""
    return list(range(rank, old_ranks, ranks))


@dataclass(frozen=True)
class ShardLayout:
    """Global slot g lives on rank g % ranks, at row g // ranks."""

    rank: int
    ranks: int

    def owner(self, slots: np.ndarray) -> np.ndarray:
        return slots % self.ranks

    def row(self, slots: np.ndarray) -> np.ndarray:
        return slots // self.ranks

    def slots_here(self, held: int) -> np.ndarray:
        """The held global slots whose rows are on this rank (rows 0, 1, ... in that order)."""
        return np.arange(self.rank, held, self.ranks, dtype=np.int64)

    def rows_needed(self, capacity: int) -> int:
        return -(-capacity // self.ranks)


@dataclass
class DrawPlan:
    """The slots one draw takes, and their bookkeeping read from the table when picked."""

    slots: np.ndarray  # (k,) int64 global slots, ascending
    scan_index: np.ndarray
    step: np.ndarray


class DistributedRehearsalStore(RehearsalStore):
    def __init__(
        self,
        comm: MPI.Comm,
        capacity_per_rank: int,
        frame_shape: tuple[int, int],
        *,
        policy: Policy = "reservoir",
        half_precision: bool = False,
        device: torch.device | str = "cpu",
        prefetch: bool = True,
        seed: int = 0,
    ) -> None:
        if prefetch:
            require_thread_level(
                MPI.THREAD_MULTIPLE, "its prefetch thread calls MPI while the training thread may"
            )
        else:
            require_thread_level(MPI.THREAD_FUNNELED, "it calls MPI from the thread that calls it")
        if policy not in POLICIES:
            raise ValueError(f"unknown store policy {policy!r}; one of {', '.join(POLICIES)}")
        settings = (capacity_per_rank, *frame_shape, half_precision, policy, prefetch, seed)
        everyone = comm.allgather(settings)
        if any(theirs != settings for theirs in everyone):
            # Different seeds or capacities would make the replicated decisions diverge silently.
            raise ValueError(
                "ranks disagree on the store settings (capacity_per_rank, H, W, half_precision, "
                f"policy, prefetch, seed): {everyone}"
            )
        self._comms = StoreComms.dup(comm)
        self.policy = policy
        self.frame_shape = frame_shape
        self.seed = seed
        self._layout = ShardLayout(self._comms.rank, self._comms.size)
        self._table = SlotTable.empty(
            capacity_per_rank * self._comms.size, scored=scores_samples(policy)
        )
        self._shard = PayloadShard(
            capacity_per_rank, frame_shape, half_precision=half_precision, device=device
        )
        self._decision_rng = np.random.default_rng(seed)  # replicated: every rank decides the same
        self._draw_rng = np.random.default_rng([seed, self._comms.rank])  # this rank's own draws
        self._prefetcher = DrawPrefetcher() if prefetch else None

    # -- sizes ------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._table.capacity

    @property
    def seen(self) -> int:
        return self._table.seen

    def __len__(self) -> int:
        return self._table.held

    @property
    def held_here(self) -> int:
        """Samples whose frames are in this rank's shard."""
        return len(self._layout.slots_here(self._table.held))

    def sample_nbytes(self) -> int:
        """Bytes a held sample costs the job: its row once, its table entry on every rank."""
        return self._shard.row_nbytes + self._comms.size * self._table.bytes_per_slot

    # -- the stream -------------------------------------------------------------------------

    def offer(self, samples: ReplaySamples, losses: torch.Tensor | None = None) -> int:
        """Collective. Returns how many of this rank's samples were written (on any rank)."""
        self._settle_prefetch()
        records, counts = allgather_rows(
            self._comms.offers, Candidates.of(samples, losses).as_records()
        )
        batch = Candidates.from_records(records)
        writes = decide(self.policy, self._table, batch, self._decision_rng)
        self._table.apply(writes, batch)
        written_here = self._deliver(writes, counts, samples)
        self._prefetch_next_step()
        return written_here

    def _deliver(self, writes: Writes, counts: np.ndarray, samples: ReplaySamples) -> int:
        """Move the written candidates' frames from the ranks that offered them to their slots' owners."""
        if len(writes) == 0:  # every rank knows it: no exchange
            return 0
        rank, ranks = self._layout.rank, self._layout.ranks
        source = np.searchsorted(np.cumsum(counts), writes.candidates, side="right")
        destination = self._layout.owner(writes.slots)
        mine = source == rank
        # Sent grouped by destination and, within one, in stream order (writes.candidates
        # ascend): the order in which the receiver lists the slots it gets from this rank.
        by_destination = np.argsort(destination[mine], kind="stable")
        first_here = int(counts[:rank].sum())
        batch_rows = torch.from_numpy(writes.candidates[mine][by_destination] - first_here)
        outgoing = (
            pack(samples.take(batch_rows.to(samples.inputs.device)), self._shard.dtype)
            .cpu()
            .numpy()
        )
        to_me = destination == rank
        incoming = exchange_rows(
            self._comms.offers,
            outgoing,
            np.bincount(destination[mine], minlength=ranks),
            np.bincount(source[to_me], minlength=ranks),
        )
        self._shard.write(self._layout.row(writes.slots[to_me]), torch.from_numpy(incoming))
        return int(mine.sum())

    def draw(self, n: int) -> ReplaySamples | None:
        """Collective. min(n, held) samples, uniform without replacement over all shards; None when empty."""
        if self._prefetcher is not None:
            self._prefetcher.note_draw(n)
            pending = self._prefetcher.take(n)
            if pending is not None:
                return pending.result.result()
            self._prefetcher.settle()
        return self._fetch(self._choose(n))

    def _choose(self, n: int) -> DrawPlan | None:
        held = self._table.held
        if held == 0:
            return None
        slots = select.draw_without_replacement(
            held, n, select.draw_uniforms(self._draw_rng, min(n, held))
        )
        return DrawPlan(slots, self._table.scan_index[slots], self._table.step[slots])

    def _fetch(self, plan: DrawPlan | None) -> ReplaySamples | None:
        """The frames of ``plan``'s slots from their owners; runs on the prefetch thread or the caller's."""
        if plan is None:  # nothing held anywhere: every rank returns None, no exchange
            return None
        comm, ranks = self._comms.fetches, self._layout.ranks
        owner = self._layout.owner(plan.slots)
        by_owner = np.argsort(owner, kind="stable")
        asked = np.bincount(owner, minlength=ranks)
        to_serve = alltoall_counts(comm, asked)
        requested_rows = exchange_rows(
            comm, self._layout.row(plan.slots[by_owner]), asked, to_serve
        )
        served = self._shard.read(requested_rows).cpu().numpy()
        received = exchange_rows(comm, served, to_serve, asked)
        rows = np.empty_like(received)
        rows[by_owner] = received  # back to the plan's (ascending slot) order
        return unpack(torch.from_numpy(rows).to(self._shard.device), plan.scan_index, plan.step)

    def _prefetch_next_step(self) -> None:
        if self._prefetcher is None:
            return
        for size in self._prefetcher.step_pattern():
            rng_state = self._draw_rng.bit_generator.state
            plan = self._choose(size)
            self._prefetcher.issue(size, rng_state, functools.partial(self._fetch, plan))

    def _settle_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.settle()

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard with the replicated table and generators (not collective)."""
        pending_rng = self._prefetcher.oldest_rng_state() if self._prefetcher is not None else None
        return {
            "ranks": self._layout.ranks,
            "rank": self._layout.rank,
            "settings": self._settings(),
            "table": self._table.state_dict(),
            "decision_rng": self._decision_rng.bit_generator.state,
            # Draws prefetched but not yet taken have advanced the generator: keep its state
            # from before them, so a restored store draws what this one will hand out next.
            "draw_rng": pending_rng or self._draw_rng.bit_generator.state,
            "rows": self._shard.planes[: self.held_here].cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Collective. Restore this rank's shard saved by a job with the same number of ranks."""
        self._settle_prefetch()
        problem = self._settings_problem(state["settings"])
        if state["ranks"] != self._layout.ranks:
            problem = (
                f"the checkpoint's store has {state['ranks']} shards (one per rank) and this job has "
                f"{self._layout.ranks} ranks: restart with {state['ranks']} ranks, or have each rank r "
                f"load the shards shards_for_rank({state['ranks']}, r, {self._layout.ranks}) names and "
                "pass them to load_resharded()"
            )
        elif state["rank"] != self._layout.rank:
            problem = f"rank {self._layout.rank} was given the shard of rank {state['rank']}"
        table = SlotTable.from_state(state["table"])
        problem = problem or self._capacity_problem(table.capacity)
        self._raise_if_any(problem)
        self._table = table
        self.seed = int(state["settings"]["seed"])
        self._decision_rng.bit_generator.state = state["decision_rng"]
        self._draw_rng.bit_generator.state = state["draw_rng"]
        self._forget_draw_pattern()
        self._shard.write(np.arange(len(state["rows"])), state["rows"])
        self.check_replicas()

    def load_resharded(self, shard_states: Sequence[dict[str, Any]]) -> None:
        """Collective. Load a checkpoint written by a different number of ranks.

        Rank r passes the states of the old shards ``shards_for_rank(old_ranks, r, ranks)``
        (rank 0 always has shard 0). Every held sample moves to the new owner of its slot.
        """
        self._settle_prefetch()
        comm, layout = self._comms.offers, self._layout
        reference = comm.bcast(
            _replicated_part(shard_states[0]) if layout.rank == 0 and shard_states else None
        )
        if reference is None:  # known to every rank: all raise
            raise StoreRestoreError("rank 0 was given no shard: it must load old shard 0")
        old_ranks = int(reference["ranks"])
        table = SlotTable.from_state(reference["table"])
        given = [int(state["rank"]) for state in shard_states]
        expected = shards_for_rank(old_ranks, layout.rank, layout.ranks)
        problem = self._settings_problem(reference["settings"]) or self._capacity_problem(
            table.capacity
        )
        if given != expected:
            problem = (
                problem or f"rank {layout.rank} was given old shards {given}, expected {expected}"
            )
        if any(
            SlotTable.from_state(state["table"]).fingerprint() != table.fingerprint()
            for state in shard_states
        ):
            problem = (
                problem
                or f"old shards {given} come from different steps of the stream than shard 0"
            )
        self._raise_if_any(problem)
        # Old shard k held the slots k, k + old_ranks, ... in its rows 0, 1, ...: send every
        # row to the new owner of its slot, with the slot number so the owner knows the row.
        slots = np.concatenate(
            [ShardLayout(k, old_ranks).slots_here(table.held) for k in given]
            + [np.zeros(0, dtype=np.int64)]
        )
        rows = torch.cat(
            [state["rows"] for state in shard_states] + [self._shard.planes[:0].cpu()]
        ).numpy()
        destination = layout.owner(slots)
        by_destination = np.argsort(destination, kind="stable")
        sending = np.bincount(destination, minlength=layout.ranks)
        receiving = alltoall_counts(comm, sending)
        my_slots = exchange_rows(comm, slots[by_destination], sending, receiving)
        my_rows = exchange_rows(comm, rows[by_destination], sending, receiving)
        self._table = table
        self.seed = int(reference["settings"]["seed"])
        self._decision_rng.bit_generator.state = reference["decision_rng"]
        self._draw_rng = np.random.default_rng([self.seed, layout.rank, table.seen])
        self._forget_draw_pattern()
        self._shard.write(layout.row(my_slots), torch.from_numpy(my_rows))
        self.check_replicas()

    def check_replicas(self) -> None:
        """Collective. Raise unless every rank's copy of the slot table is the same."""
        fingerprints = self._comms.offers.allgather(self._table.fingerprint())
        if len(set(fingerprints)) != 1:
            raise StoreRestoreError(
                f"the ranks' slot tables differ (seen per rank: {self._comms.offers.allgather(self.seen)}): "
                "the shards come from different steps of the stream"
            )

    def close(self) -> None:
        """Collective. Finish pending exchanges, stop the prefetch thread, free the communicators."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self._comms.free()

    def __enter__(self) -> DistributedRehearsalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "frame_shape": list(self.frame_shape),
            "half_precision": self._shard.dtype == torch.float16,
            "capacity_per_rank": self._shard.rows,
            "seed": self.seed,
        }

    def _settings_problem(self, saved: dict[str, Any]) -> str | None:
        ours = self._settings()
        # A store may grow its shards (capacity_per_rank) between runs, _capacity_problem
        # checks what matters (every slot has a row); the seed is the checkpoint's to keep.
        different = [k for k in ("policy", "frame_shape", "half_precision") if saved[k] != ours[k]]
        if different:
            return "; ".join(
                f"{k} is {saved[k]!r} in the checkpoint, {ours[k]!r} configured" for k in different
            )
        return None

    def _capacity_problem(self, capacity: int) -> str | None:
        needed = self._layout.rows_needed(capacity)
        if needed <= self._shard.rows:
            return None
        return (
            f"the checkpoint's store has {capacity} slots: on {self._layout.ranks} ranks each needs "
            f"{needed} rows and this store has {self._shard.rows} per rank; raise the capacity per rank "
            f"to {needed} or run on at least {-(-capacity // self._shard.rows)} ranks"
        )

    def _raise_if_any(self, problem: str | None) -> None:
        """Collective: every rank raises when any rank found a problem, so none waits forever."""
        problems = self._comms.offers.allgather(problem)
        found = [(rank, p) for rank, p in enumerate(problems) if p is not None]
        if found:
            rank, first = found[0]
            raise StoreRestoreError(f"rank {rank}: {first}")

    def _forget_draw_pattern(self) -> None:
        # Draws noted before a restore say nothing about the restored stream's next step.
        if self._prefetcher is not None:
            self._prefetcher.step_pattern()


def _replicated_part(state: dict[str, Any]) -> dict[str, Any]:
    """What every shard's state holds alike (the frames excluded), for a broadcast."""
    return {key: state[key] for key in ("ranks", "settings", "table", "decision_rng")}
