"""Data-parallel training across MPI ranks: who this process is, and how the ranks agree.

Design notes: docs/design.md.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ptycl.errors import PtyclError

if TYPE_CHECKING:
    from mpi4py import MPI

# Variables MPI launchers set in every process they start: MPICH/Intel MPI hydra and Slurm's
# PMI-2 (PMI_*), PMIx (srun --mpi=pmix, Open MPI 5), Open MPI, MVAPICH, Cray PALS, srun steps.
_LAUNCHER_SIZE_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "PALS_SIZE",
    "SLURM_STEP_NUM_TASKS",
)
_LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID")


class DistributedSetupError(PtyclError, RuntimeError):
    """The processes cannot form one job (launcher and MPI library disagree, a bad device)."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job, and the MPI communicator the trainer agrees over."""

    rank: int
    world_size: int
    local_rank: int  # rank among the processes on this node
    device: torch.device
    comm: MPI.Comm | None  # a duplicate of COMM_WORLD; None in a job of one process

    @staticmethod
    def single(device: torch.device) -> Distributed:
        """One process: no MPI, no torch.distributed."""
        return Distributed(rank=0, world_size=1, local_rank=0, device=device, comm=None)

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs and writes the run's outputs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # -- sharing a batch --------------------------------------------------------------------

    def share(self, total: int) -> slice:
        """This rank's contiguous part of ``total`` items split as evenly as possible in rank
        order (the first ``total % world_size`` ranks take one more)."""
        base, extra = divmod(total, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def share_sizes(self, total: int) -> list[int]:
        """Every rank's part of ``total`` (what ``share`` gives each rank), in rank order."""
        base, extra = divmod(total, self.world_size)
        return [base + (rank < extra) for rank in range(self.world_size)]

    # -- agreeing ---------------------------------------------------------------------------

    def any(self, flag: bool) -> bool:
        """Collective: True on every rank when ``flag`` is True on any rank."""
        if self.comm is None:
            return flag
        from mpi4py import MPI

        return bool(self.comm.allreduce(bool(flag), op=MPI.LOR))

    def broadcast(self, value: Any) -> Any:
        """Collective: rank 0's ``value`` on every rank (plain Python values)."""
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def allgather(self, value: Any) -> list[Any]:
        """Collective: every rank's ``value`` (plain Python values), in rank order."""
        return [value] if self.comm is None else self.comm.allgather(value)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    @contextmanager
    def fail_fast(self) -> Iterator[None]:
        """An exception on one rank ends the whole job, with one line naming the rank.

        With one process the exception propagates as usual (the CLI prints ptycl's own errors
        as one line). With several, the other ranks may be waiting in a collective for this
        one: print the error, then MPI_Abort, which the launcher turns into the end of every
        rank and a non-zero exit status.
        """
        try:
            yield
        except (Exception, KeyboardInterrupt) as exc:
            if not self.is_distributed:
                raise
            _abort(self.comm, exc)

    def close(self) -> None:
        """Collective: leave torch.distributed and free the communicator (end of a run)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if self.comm is not None:
            self.comm.Free()


def launched_by_mpi(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process."""
    return any(name in environ for name in _LAUNCHER_SIZE_VARIABLES + _LAUNCHER_RANK_VARIABLES)


def _launcher_size(environ: Mapping[str, str]) -> int | None:
    for name in _LAUNCHER_SIZE_VARIABLES:
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return None


def init_distributed(device: str = "auto") -> Distributed:
    """Join the job this process was launched in (``device``: train.device of the config).

    Collective over MPI COMM_WORLD when launched by MPI; otherwise ``Distributed.single``.
    """
    if not launched_by_mpi():
        return Distributed.single(resolve_device(device))
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    launched = _launcher_size(os.environ)
    if world.size == 1 and launched not in (None, 1):
        # Each process initialised MPI on its own: mpi4py talks to another MPI than the
        # launcher's, or srun was not told the PMI to use. N independent runs would overwrite
        # each other's outputs.
        raise DistributedSetupError(
            f"the launcher started {launched} processes but MPI sees a world of 1: mpi4py is "
            "built against a different MPI than the launcher's (use the mpiexec of the MPI "
            "mpi4py was built with), or under Slurm run srun --mpi=pmi2 (MPICH) or --mpi=pmix "
            "(Open MPI)"
        )
    if world.size == 1:
        return Distributed.single(resolve_device(device))
    try:
        node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
        local_rank, local_size = node.rank, node.size
        node.Free()
        chosen = _device_for_rank(resolve_device(device), local_rank)
        if chosen.type == "cpu":
            _share_cores(local_size)
        address, port = _rendezvous(world)
        torch.distributed.init_process_group(
            backend="nccl" if chosen.type == "cuda" else "gloo",
            init_method=f"tcp://{address}:{port}",
            rank=world.rank,
            world_size=world.size,
            **({"device_id": chosen} if chosen.type == "cuda" else {}),
        )
    except Exception as exc:  # the other ranks may be waiting for this one: end the job
        _abort(world, exc)
    return Distributed(world.rank, world.size, local_rank, chosen, comm=world.Dup())


def _abort(comm: MPI.Comm, exc: BaseException) -> None:
    """Print ``exc`` as one line naming this rank (unexpected errors with their traceback
    first), then MPI_Abort: the launcher ends every rank and exits non-zero."""
    if not isinstance(exc, PtyclError | KeyboardInterrupt):
        traceback.print_exc(file=sys.stderr)
    what = str(exc) if isinstance(exc, PtyclError) else f"{type(exc).__name__}: {exc}"
    print(f"ptycl: error: rank {comm.rank} of {comm.size}: {what}", file=sys.stderr, flush=True)
    comm.Abort(1)


def _device_for_rank(device: torch.device, local_rank: int) -> torch.device:
    """One GPU per rank, chosen by the node-local rank."""
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DistributedSetupError("train.device is cuda but this rank sees no CUDA device")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _share_cores(local_size: int) -> None:
    """Give each of the node's ranks its share of the cores, unless the environment decided.

    A rank the launcher bound to some cores (srun --cpus-per-task, mpiexec -bind-to) uses
    those; an unbound rank takes cores / ranks on the node.
    """
    cores = os.cpu_count() or 1
    bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    per_rank = bound if bound < cores else max(1, cores // local_size)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(per_rank)
    if "NUMBA_NUM_THREADS" not in os.environ:
        import numba

        numba.set_num_threads(min(per_rank, numba.config.NUMBA_NUM_THREADS))


def _rendezvous(world: MPI.Comm) -> tuple[str, int]:
    """torch.distributed's meeting point: MASTER_ADDR / MASTER_PORT when set, else rank 0's
    host name and a port free there, broadcast over MPI."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if world.rank == 0:
        address = address or socket.gethostname()
        if not port:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("", 0))
                port = str(probe.getsockname()[1])
    address, port = world.bcast((address, port), root=0)
    return address, int(port)
