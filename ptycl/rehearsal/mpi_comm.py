"""The MPI the distributed store uses: its own communicators, a thread-level check, and
the three array collectives it is built from.

Arrays travel as raw bytes (``MPI.BYTE``), row by row: any numpy dtype, structured
records and float16 included, moves the same way, and a row's layout is whatever numpy
says it is on both ends (all ranks run the same build).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from ptycl.rehearsal.errors import MPIThreadLevelError

THREAD_LEVEL_NAMES = {
    MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE",
    MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
    MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED",
    MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE",
}


def require_thread_level(required: int, why: str) -> None:
    """Raise a clear error when MPI was initialised with less thread support than ``required``."""
    provided = MPI.Query_thread()
    if provided < required:
        raise MPIThreadLevelError(
            f"the distributed rehearsal store needs {THREAD_LEVEL_NAMES[required]} ({why}); "
            f"MPI was initialised with {THREAD_LEVEL_NAMES[provided]}. mpi4py asks for "
            "MPI_THREAD_MULTIPLE unless mpi4py.rc.thread_level (or `python -m mpi4py -rc "
            "thread_level=...`) says otherwise; an MPI built without thread support cannot "
            "give it. Or turn the prefetch off: train.store.prefetch=false."
        )


@dataclass
class StoreComms:
    """Private duplicates of the caller's communicator, one per thread that talks.

    ``offers`` carries the collectives of offer() and of restores, made by the calling
    thread; ``fetches`` carries the exchanges of draws, made by the prefetch thread (or by
    the calling thread when it draws synchronously). Duplicates keep the store's messages
    from ever matching the caller's own collectives, and give each thread its own ordered
    sequence of collectives, which is what MPI requires of concurrent collectives.
    """

    offers: MPI.Comm
    fetches: MPI.Comm

    @staticmethod
    def dup(comm: MPI.Comm) -> StoreComms:
        return StoreComms(offers=comm.Dup(), fetches=comm.Dup())

    @property
    def rank(self) -> int:
        return self.offers.rank

    @property
    def size(self) -> int:
        return self.offers.size

    def free(self) -> None:
        for comm in (self.offers, self.fetches):
            if comm != MPI.COMM_NULL:
                comm.Free()


def _bytes(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows).view(np.uint8).reshape(-1)


def _byte_layout(counts: np.ndarray, row_nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    sizes = counts.astype(np.int64) * row_nbytes
    return sizes, np.cumsum(sizes) - sizes


def allgather_rows(comm: MPI.Comm, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's ``rows`` concatenated in rank order, and how many each rank gave.

    Ranks may give different numbers of rows, zero included; the row shape and dtype must match.
    """
    counts = np.empty(comm.size, dtype=np.int64)
    comm.Allgather(np.array([len(rows)], dtype=np.int64), counts)
    gathered = np.empty((int(counts.sum()), *rows.shape[1:]), dtype=rows.dtype)
    row_nbytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
    comm.Allgatherv(_bytes(rows), [_bytes(gathered), _byte_layout(counts, row_nbytes), MPI.BYTE])
    return gathered, counts


def alltoall_counts(comm: MPI.Comm, send_counts: np.ndarray) -> np.ndarray:
    """How many rows each rank will send to this one, given what this one sends to each."""
    recv_counts = np.empty(comm.size, dtype=np.int64)
    comm.Alltoall(send_counts.astype(np.int64), recv_counts)
    return recv_counts


def alltoallv_rows(comm: MPI.Comm, rows: np.ndarray, send_counts: np.ndarray, recv_counts: np.ndarray) -> np.ndarray:
    """Send ``rows`` grouped by destination (``send_counts[d]`` rows to rank d, in rank order);
    return the rows received, grouped by source rank."""
    received = np.empty((int(recv_counts.sum()), *rows.shape[1:]), dtype=rows.dtype)
    row_nbytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
    comm.Alltoallv(
        [_bytes(rows), _byte_layout(send_counts, row_nbytes), MPI.BYTE],
        [_bytes(received), _byte_layout(recv_counts, row_nbytes), MPI.BYTE],
    )
    return received
