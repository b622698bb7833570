"""The MPI the distributed store uses: its own communicators, a thread-level check, and
the three array exchanges it is built from.

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


def exchange_rows(
    comm: MPI.Comm, rows: np.ndarray, send_counts: np.ndarray, recv_counts: np.ndarray
) -> np.ndarray:
    """Send ``rows`` grouped by destination (``send_counts[d]`` rows to rank d, in rank order);
    return the rows received, grouped by source rank.

    An all-to-all of variable sizes, made of nonblocking point-to-point messages to and from
    the ranks that have rows to exchange. Why not MPI_Alltoallv: with MPICH, while the ranks'
    main threads compute, the collective's shared-memory pipeline advances only when both
    ranks' threads get a core in turn, where point-to-point messages use single-copy transfers
    (docs/performance.md). Peers with nothing to exchange cost nothing.
    """
    received = np.empty((int(recv_counts.sum()), *rows.shape[1:]), dtype=rows.dtype)
    row_nbytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
    send_bytes, recv_bytes = _bytes(rows), _bytes(received)
    send_sizes, send_starts = _byte_layout(send_counts, row_nbytes)
    recv_sizes, recv_starts = _byte_layout(recv_counts, row_nbytes)
    me = comm.rank
    requests = [
        comm.Irecv(
            recv_bytes[recv_starts[k] : recv_starts[k] + recv_sizes[k]], source=k, tag=_ROWS_TAG
        )
        for k in range(comm.size)
        if k != me and recv_sizes[k]
    ]
    requests += [
        comm.Isend(
            send_bytes[send_starts[k] : send_starts[k] + send_sizes[k]], dest=k, tag=_ROWS_TAG
        )
        for k in range(comm.size)
        if k != me and send_sizes[k]
    ]
    recv_bytes[recv_starts[me] : recv_starts[me] + recv_sizes[me]] = send_bytes[
        send_starts[me] : send_starts[me] + send_sizes[me]
    ]
    MPI.Request.Waitall(requests)
    return received


# One exchange completes before the next starts on a communicator, and messages between two
# ranks do not overtake each other, so a single tag cannot mix rows of different exchanges.
_ROWS_TAG = 17
