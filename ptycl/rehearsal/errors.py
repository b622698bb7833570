"""What the rehearsal stores raise on purpose: one line saying what is wrong and what to do."""

from __future__ import annotations

from ptycl.errors import PtyclError


class StoreRestoreError(PtyclError, ValueError):
    """A store checkpoint does not fit the store it is loaded into (capacity, policy, ranks)."""


class MPIThreadLevelError(PtyclError, RuntimeError):
    """MPI was initialised with less thread support than the distributed store needs."""
