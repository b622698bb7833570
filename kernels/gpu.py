"""Lazy access to CuPy for the GPU twins.

ptycl.kernels must import on machines without CuPy or without a GPU, so no module imports
cupy at load time: each GPU twin calls ``cupy()`` when it runs, and compiled CUDA kernels
are built on first use and kept for the process.
"""

from __future__ import annotations

import functools
from types import ModuleType


def cupy() -> ModuleType:
    """The cupy module; ImportError with an install hint when it is absent."""
    try:
        import cupy as cp
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "the GPU kernels need CuPy: pip install 'ptycl[gpu]' (cupy-cuda12x)"
        ) from err
    return cp


def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device; never raises."""
    try:
        return bool(cupy().cuda.is_available())
    except Exception:
        return False


@functools.cache
def raw_kernel(source: str, name: str):
    """The compiled CUDA function ``name`` of ``source`` (compiled once per process)."""
    return cupy().RawKernel(source, name)


def launch_1d(kernel, n: int, args: tuple, threads: int = 256) -> None:
    """Launch ``kernel`` over ``n`` items, one thread each (kernels guard ``i < n``)."""
    blocks = max(1, (n + threads - 1) // threads)
    kernel((blocks,), (threads,), args)
