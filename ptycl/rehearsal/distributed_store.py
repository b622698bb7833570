"""The MPI-distributed rehearsal store: one shard per rank, one uniform sample of the global stream.

What each rank holds
--------------------
The store has ``capacity`` global slots, ``capacity_per_rank`` per rank. Slot g lives on rank
g % ranks, at row g // ranks of that rank's shard (``ShardLayout``): interleaved, so the
slots, which fill in order, spread the first samples over all ranks. Every rank holds

- its shard: the frames of its slots (input, label amplitude/phase, DER output
  amplitude/phase), preallocated in host memory (pinned when CUDA is available) or GPU memory;
- the whole slot table: scan, insertion step and score of every global slot, with the stream
  counters (``SlotTable``, 16-24 bytes a slot), identical on every rank;
- the decision generator, identical on every rank, and its own draw generator.

Insertion: Algorithm R on the global stream, decided on every rank
------------------------------------------------------------------
``offer`` on every rank: (1) one Allgatherv of the candidates' bookkeeping (scan, step, loss:
24 bytes each) gives every rank the step's global batch in stream order, rank 0's candidates
first (rank r's candidate i is stream item seen + sum(counts[:r]) + i: the exclusive scan of
the counts); (2) every rank runs the policy (``ptycl.rehearsal.policies``) on the same table
with the same generator and gets the same writes, so nothing more needs agreeing; (3) one
exchange moves the frames of the written candidates from the rank that offered them to the
rank owning their slot (point-to-point, between the ranks with frames to move only). The
global store is then exactly what the single-process store would hold if fed the global
stream in that order (tested slot by slot), from the first sample on.

Why Algorithm R with global stream indices, not per-rank random keys merged top-M: both give
an exactly uniform sample, but Algorithm R needs only the count of samples seen, which the
ranks agree on with the count exchange they make anyway, where random keys need a key per
held sample and a merge of every candidate against the globally lowest keys; the balanced and
loss-aware policies are sequential kernels over one ordered stream, which the replicated
decision gives them unchanged; and with one rank the store decides exactly as
``LocalReservoirStore`` does. A sample moves at most once, when written; after the fill,
acceptance falls as capacity / seen, and the traffic with it.

Draws: uniform over all shards
------------------------------
``draw(n)`` picks min(n, held) distinct global slots uniformly (Floyd) with the rank's own
generator, reading the replicated table; held = min(seen, capacity) is the same on every rank.
The frames come from their owners in one request/response exchange on a second communicator:
an Alltoall of counts, then the requested rows and the frames as nonblocking point-to-point
messages between the ranks that exchange anything (``mpi_comm.exchange_rows``).

The transport was chosen by measurement (``ptycl bench store``, MPICH, 2 ranks, a draw of 32
samples of 128²): idle, MPI_Alltoallv, point-to-point and one-sided MPI_Get all take 7-8 ms;
started on a background thread while every rank's main thread computes (a prefetch during a
step), point-to-point finished after ~28 ms, while Alltoallv and passive-target Get finished
only when the 100 ms of compute ended: the collective's shared-memory pipeline and the RMA
target both need the peer's process to run MPI code in turn, point-to-point messages use a
single-copy transfer.

Prefetch
--------
With ``prefetch`` (default), when offer() returns, the store issues the draws the step just
made again, for the next step: the slots are picked at once on the calling thread, the
exchange runs on a background thread while the next step computes, and the next draw() of the
same size returns it (``ptycl.rehearsal.prefetch``). A prefetched draw reads the store as it
stands after that offer, as a synchronous draw would: prefetching changes when samples move,
never which ones a draw returns. offer() first waits for pending exchanges, so no exchange
reads a row while it is overwritten.

Collective contract
-------------------
In data-parallel training every rank calls offer() once per step and draw() the same number of
times per step, in the same order: each is collective over the communicator given here (its
duplicates). Ranks may offer different numbers of rows, zero included, and ask different
sizes; with prefetch, a rank that changes the size it asks must do so at the same call as every
other rank (the trainer's sizes are fixed by the configuration). load_state_dict,
load_resharded, check_replicas and close are collective too.

MPI thread level: with prefetch, MPI_THREAD_MULTIPLE (the prefetch thread calls MPI while the
training thread may call it too: this store's offers, or the caller's own collectives);
without, MPI_THREAD_FUNNELED, calls from the main thread. Checked at construction.

Checkpoints
-----------
Each rank saves its shard's filled rows, the replicated table, both generators and the number
of ranks (``state_dict``). The same number of ranks restores it exactly (``load_state_dict``,
then the stream continues as if uninterrupted). A different number raises
``StoreRestoreError``; ``load_resharded`` takes the old shards instead (rank r passes
``shards_for_rank(old_ranks, r, ranks)``) and moves every held sample to its slot's new owner.
The global capacity, the table and the decision generator carry over unchanged, so the sample
keeps its law; it needs ceil(capacity / ranks) rows per rank and refuses clearly otherwise.
Draw generators restart from (seed, rank, seen): the same law, not the same numbers.

Compared with asynchronous distributed rehearsal buffers (Bouvier et al., CCGrid 2024)
------------------------------------------------------------------------------------------
That design keeps a buffer per GPU split into per-class buckets; each incoming sample enters
its bucket with a fixed probability, replacing a random member once the bucket is full, and a
rehearsal batch is assembled from randomly chosen remote buffers over RDMA, in the background.
A fixed acceptance probability makes a sample's survival decay geometrically with the samples
after it, so buffers favour recent data; sampling buffers and buckets uniformly is uniform over
samples only once every bucket is full. Here acceptance is capacity / seen over the global
stream, so every sample seen anywhere is held with the same probability from the first sample
on, and draws pick global slots uniformly, so they are uniform over what is held at any fill,
empty shards and unequal fills included. The price is a collective per offer and per draw (a
few bytes per candidate, plus the frames that move); the prefetch hides the draw's.
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
from ptycl.rehearsal.packed_rows import pack_rows, unpack_rows
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
            "rows": pack_rows(self._shard.planes[: self.held_here]),
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
        rows = unpack_rows(state["rows"])
        self._shard.write(np.arange(len(rows)), rows)
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
            [unpack_rows(state["rows"]) for state in shard_states]
            + [self._shard.planes[:0].cpu()]
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
