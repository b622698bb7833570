"""The rehearsal store, measured side by side in one run (``ptycl bench store``).

Design notes: docs/design.md.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from ptycl.bench import kernels as kernel_bench
from ptycl.bench.ranks import on_ranks, rank_main
from ptycl.bench.replay_data import fill_to_steady_state, random_samples
from ptycl.bench.timing import items_per_second
from ptycl.config import Config
from ptycl.model.ptychonn import PtychoNN
from ptycl.rehearsal.local_store import LocalReservoirStore, samples_per_rank_for_bytes
from ptycl.rehearsal.policies import POLICIES, decide, scores_samples
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.slot_table import Candidates, SlotTable
from ptycl.train.losses import der_distance, per_sample_task_loss

# mpi4py and the distributed store are imported inside the parts that run on ranks: the
# process that launches mpiexec never initialises MPI itself.

_MODULE = "ptycl.bench.store"  # what mpiexec runs on each rank (``rank_main`` below)
DRAW_SIZE, DRAW_FRAME = 32, 128
DRAW_RANKS = (1, 2, 4)
STEP_RANKS = 2
TARGET_PER_CORE = kernel_bench.TARGET_PER_CORE
TARGET_STEP_RATIO = 1.05  # prefetched global replay within 5% of local-only replay


# ---- 1. selection ------------------------------------------------------------------------


def _policy_rates(seconds: float) -> dict[str, Any]:
    """Candidates/s of each policy's decision on a full global table, one Numba thread."""
    capacity, batch, scans = kernel_bench.CAPACITY, kernel_bench.BATCH, kernel_bench.GROUPS
    rng = np.random.default_rng(0)
    candidates = Candidates(
        scan_index=np.arange(batch, dtype=np.int64) % scans,
        step=np.zeros(batch, dtype=np.int64),
        loss=rng.random(batch),
    )
    rates = {}
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for policy in POLICIES:
            table = SlotTable.empty(capacity, scored=scores_samples(policy))
            table.seen = 10 * capacity  # steady state: full, most candidates rejected
            table.scan_index[:] = np.arange(capacity) % scans
            table.scan_seen = np.full(scans, table.seen // scans, dtype=np.int64)
            if table.score is not None:
                table.score[:] = rng.random(capacity)
            rates[policy] = items_per_second(
                functools.partial(decide, policy, table, candidates, rng), batch, seconds
            )
    finally:
        numba.set_num_threads(threads)
    return {
        "workload": {
            "capacity": capacity,
            "global_batch": batch,
            "scans": scans,
            "seen": 10 * capacity,
        },
        "candidates_per_s_one_thread": rates,
    }


# ---- 4. capacity -------------------------------------------------------------------------


def _samples_per_gib() -> list[dict[str, Any]]:
    rows = []
    for size in (64, 128, 256):
        for half in (False, True):
            per_rank = {
                ranks: samples_per_rank_for_bytes(
                    2**30, (size, size), half_precision=half, policy="reservoir", ranks=ranks
                )
                for ranks in (1, 4, 128)
            }
            rows.append(
                {
                    "frame": size,
                    "dtype": "fp16" if half else "fp32",
                    "bytes_per_sample_row": 5 * size * size * (2 if half else 4),
                    "samples_per_gib_per_rank": per_rank,
                }
            )
    return rows


# ---- 2. draw latency (runs on every rank) ------------------------------------------------


def _milliseconds(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1e3 * float(np.median(times)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
    }


def _compute_for(seconds: float) -> None:
    """Keep this rank busy in torch, outside MPI, like a training step."""
    a = torch.rand(256, 256)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        a = torch.tanh(a @ a)


def draw_latency_part(params: dict[str, Any]) -> dict[str, Any]:
    from mpi4py import MPI

    from ptycl.rehearsal.distributed_store import DistributedRehearsalStore

    comm = MPI.COMM_WORLD
    frame, per_rank, draws = params["frame"], params["capacity_per_rank"], params["draws"]
    generator = torch.Generator().manual_seed(comm.rank)
    result: dict[str, Any] = {"ranks": comm.size}

    def timed(call: Callable[[], object]) -> list[float]:
        """Per-draw latency, the slowest rank's: the draw is ready when every rank has its batch."""
        times = []
        for i in range(draws + 3):
            comm.Barrier()
            started = time.perf_counter()
            call()
            if i >= 3:  # warm-up
                times.append(comm.allreduce(time.perf_counter() - started, op=MPI.MAX))
        return times

    local = LocalReservoirStore(per_rank, (frame, frame), seed=comm.rank)
    fill_to_steady_state(local, per_rank, frame, generator)
    result["local_draw"] = _milliseconds(timed(lambda: local.draw(DRAW_SIZE)))
    with DistributedRehearsalStore(comm, per_rank, (frame, frame), prefetch=False) as store:
        fill_to_steady_state(store, per_rank, frame, generator)
        result["global_draw"] = _milliseconds(timed(lambda: store.draw(DRAW_SIZE)))
    with DistributedRehearsalStore(comm, per_rank, (frame, frame), prefetch=True) as store:
        fill_to_steady_state(store, per_rank, frame, generator)
        store.draw(DRAW_SIZE)  # teaches the prefetcher the step's draw

        def step_then_draw() -> float:
            store.offer(random_samples(0, frame, generator))  # issues the prefetch
            _compute_for(params["compute_s"])
            started = time.perf_counter()
            store.draw(DRAW_SIZE)
            return time.perf_counter() - started

        waits = [comm.allreduce(step_then_draw(), op=MPI.MAX) for _ in range(max(3, draws // 4))]
        result["prefetched_draw_wait_after_compute"] = {
            **_milliseconds(waits),
            "compute_ms": 1e3 * params["compute_s"],
        }
    if comm.size > 1:
        result["transports"] = _transport_comparison(
            comm, per_rank, frame, max(3, draws // 4), params["compute_s"]
        )
    return result


def _transport_comparison(
    comm, per_rank: int, frame: int, draws: int, compute_s: float
) -> dict[str, Any]:
    """A draw's frames moved by three transports, from raw shards of the store's size.

    Each transport's latency idle, and its time to completion when started on a background
    thread while every rank's main thread computes for ``compute_s`` outside MPI (what a
    prefetch does during a training step). Transports: MPI_Alltoallv; nonblocking
    point-to-point (``mpi_comm.exchange_rows``, what the store uses); one-sided MPI_Get from
    windows over the shards (passive target, Lock_all / Get / Unlock_all).
    """
    from concurrent.futures import ThreadPoolExecutor

    from mpi4py import MPI

    from ptycl.rehearsal.mpi_comm import alltoall_counts, exchange_rows

    shard = np.random.default_rng(comm.rank).random((per_rank, 5, frame, frame), dtype=np.float32)
    window = MPI.Win.Create(shard, comm=comm)
    fetches = comm.Dup()
    rng = np.random.default_rng(100 + comm.rank)

    def by_collective(
        comm_, rows: np.ndarray, send_counts: np.ndarray, recv_counts: np.ndarray
    ) -> np.ndarray:
        """MPI_Alltoallv with the signature of ``exchange_rows``."""
        received = np.empty((int(recv_counts.sum()), *rows.shape[1:]), dtype=rows.dtype)
        row_nbytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:]))

        def layout(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return counts * row_nbytes, (np.cumsum(counts) - counts) * row_nbytes

        comm_.Alltoallv(
            [np.ascontiguousarray(rows).view(np.uint8), layout(send_counts), MPI.BYTE],
            [received.view(np.uint8), layout(recv_counts), MPI.BYTE],
        )
        return received

    def request_response(exchange: Callable[..., np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        def draw(slots: np.ndarray) -> np.ndarray:
            owner = slots % comm.size
            by_owner = np.argsort(owner, kind="stable")
            asked = np.bincount(owner, minlength=comm.size)
            to_serve = alltoall_counts(fetches, asked)
            wanted = exchange(fetches, slots[by_owner] // comm.size, asked, to_serve)
            return exchange(fetches, shard[wanted], to_serve, asked)

        return draw

    def by_rma(slots: np.ndarray) -> np.ndarray:
        out = np.empty((len(slots), 5, frame, frame), dtype=np.float32)
        window.Lock_all()
        for j, slot in enumerate(slots):
            owner, row = int(slot % comm.size), int(slot // comm.size)
            window.Get(
                [out[j], MPI.FLOAT], owner, target=(row * shard[0].nbytes, out[j].size, MPI.FLOAT)
            )
        window.Unlock_all()
        return out

    transports = {
        "alltoallv": request_response(by_collective),
        "isend_irecv": request_response(exchange_rows),
        "rma_get": by_rma,
    }
    result = {}
    with ThreadPoolExecutor(max_workers=1) as worker:
        for name, draw in transports.items():
            idle, during_compute = [], []
            for _ in range(draws + 2):  # the first 2: warm-up
                slots = np.sort(rng.choice(per_rank * comm.size, DRAW_SIZE, replace=False))
                comm.Barrier()
                started = time.perf_counter()
                draw(slots)
                idle.append(comm.allreduce(time.perf_counter() - started, op=MPI.MAX))
                comm.Barrier()
                started = time.perf_counter()
                finished = worker.submit(_finish_time, draw, slots)
                _compute_for(compute_s)
                during_compute.append(comm.allreduce(finished.result() - started, op=MPI.MAX))
            result[name] = {
                "idle": _milliseconds(idle[2:]),
                "done_after_during_compute": _milliseconds(during_compute[2:]),
            }
    comm.Barrier()
    window.Free()
    fetches.Free()
    return {"compute_ms": 1e3 * compute_s, **result}


def _finish_time(call: Callable[[np.ndarray], object], argument: np.ndarray) -> float:
    call(argument)
    return time.perf_counter()


# ---- 3. training step (runs on every rank) -----------------------------------------------


@dataclass
class StepWorkload:
    frame: int
    width: int
    depth: int
    batch: int
    replay: int  # the replay batch, local or global alike
    capacity_per_rank: int
    rounds: int
    steps_per_round: int


def step_time_part(params: dict[str, Any]) -> dict[str, Any]:
    from mpi4py import MPI

    from ptycl.rehearsal.distributed_store import DistributedRehearsalStore

    comm = MPI.COMM_WORLD
    work = StepWorkload(**params)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.size))
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(comm.rank)
    frame = (work.frame, work.frame)
    model = PtychoNN(work.width, work.depth, work.frame)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    pool = random_samples(256, work.frame, generator)
    stores = {
        "no_rehearsal": None,
        "local_replay": LocalReservoirStore(work.capacity_per_rank, frame, seed=comm.rank),
        "global_replay_sync": DistributedRehearsalStore(
            comm, work.capacity_per_rank, frame, prefetch=False
        ),
        "global_replay_prefetch": DistributedRehearsalStore(
            comm, work.capacity_per_rank, frame, prefetch=True
        ),
    }
    for store in stores.values():
        if store is not None:
            fill_to_steady_state(store, work.capacity_per_rank, work.frame, generator)

    def step(store, step_index: int) -> float:
        started = time.perf_counter()
        rows = torch.randint(0, len(pool), (work.batch,), generator=generator)
        inputs, labels = pool.inputs[rows], pool.labels[rows]
        predicted = model(inputs)
        per_sample = per_sample_task_loss(predicted, labels, "mae")
        loss = per_sample.mean()
        replay = store.draw(work.replay) if store is not None else None
        if replay is not None:
            replay = replay.to("cpu", torch.float32)
            loss = loss + 0.3 * der_distance(model(replay.inputs), replay.outputs, "mae")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _allreduce_gradients(model, comm)
        optimizer.step()
        if store is not None:
            offered = ReplaySamples(
                inputs,
                labels,
                predicted.stacked().detach(),
                torch.zeros(work.batch, dtype=torch.int64),
                torch.full((work.batch,), step_index, dtype=torch.int64),
            )
            store.offer(offered, per_sample.detach())
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in stores}
    for round_index in range(work.rounds + 1):  # round 0 warms up every variant
        for name, store in stores.items():
            for i in range(work.steps_per_round):
                elapsed = comm.allreduce(step(store, round_index * 1000 + i), op=MPI.MAX)
                if round_index > 0:
                    times[name].append(elapsed)
    for store in stores.values():
        if isinstance(store, DistributedRehearsalStore):
            store.close()
    medians = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    return {
        "ranks": comm.size,
        "torch_threads_per_rank": torch.get_num_threads(),
        "workload": asdict(work),
        "step_ms": {name: {**_milliseconds(t), "steps": len(t)} for name, t in times.items()},
        "prefetch_over_local": medians["global_replay_prefetch"] / medians["local_replay"],
        "sync_over_local": medians["global_replay_sync"] / medians["local_replay"],
        "meets_target": medians["global_replay_prefetch"]
        <= TARGET_STEP_RATIO * medians["local_replay"],
    }


def _allreduce_gradients(model: torch.nn.Module, comm) -> None:
    """Average gradients over ranks, as data-parallel training does every step."""
    from mpi4py import MPI

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    comm.Allreduce(MPI.IN_PLACE, flat.numpy())
    flat /= comm.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# ---- the suite ---------------------------------------------------------------------------


def run(config: Config, out_dir: Path, quick: bool) -> dict[str, Any]:
    """Measure everything above and return it (``ptycl bench`` writes it as JSON)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels = kernel_bench.run(out_dir / "store-kernels", quick)
    per_thread = {name: k["per_s_one_thread"] for name, k in kernels["numba"]["kernels"].items()}
    draw_params = {
        "frame": DRAW_FRAME,
        "capacity_per_rank": 128,
        "draws": 12 if quick else 60,
        "compute_s": 0.1,
    }
    frame = config.prep.input_size if config.prep.input_size in (64, 128) else 64
    workloads = [
        (
            "light_model",
            StepWorkload(
                frame,
                8,
                config.model.depth,
                config.train.batch_size,
                config.train.batch_size,
                512,
                1 if quick else 4,
                3 if quick else 8,
            ),
        )
    ]
    if not quick:  # the configured model: compute-bound on CPUs, minutes per run here
        workloads.append(
            (
                "configured_model",
                StepWorkload(
                    frame,
                    config.model.width,
                    config.model.depth,
                    config.train.batch_size,
                    config.train.batch_size,
                    512,
                    2,
                    4,
                ),
            )
        )
    result = {
        "selection": {
            "target_per_core": TARGET_PER_CORE,
            "kernels_per_s_one_thread": per_thread,
            "kernels_meet_target": {
                name: rate >= TARGET_PER_CORE for name, rate in per_thread.items()
            },
            "policies": _policy_rates(0.05 if quick else 0.3),
        },
        "global_draw": {
            "draw_size": DRAW_SIZE,
            "frame": DRAW_FRAME,
            "dtype": "fp32",
            **draw_params,
            "by_ranks": {
                ranks: on_ranks(_MODULE, ranks, "draw", draw_params, timeout=600)
                for ranks in DRAW_RANKS
            },
        },
        "step_time": {
            name: on_ranks(_MODULE, STEP_RANKS, "step", asdict(work), timeout=1800)
            for name, work in workloads
        },
        "samples_per_gib": _samples_per_gib(),
        "cpu_count": os.cpu_count(),
    }
    return result


_PARTS = {"draw": draw_latency_part, "step": step_time_part}

if __name__ == "__main__":  # one rank of a multi-rank part (``ptycl.bench.ranks``)
    rank_main(_PARTS)
