"""Sample-selection kernels of the rehearsal store, each as a Numba CPU twin and a CuPy GPU twin.

Design notes: docs/design.md.
"""

from ptycl.kernels.draws import distinct_indices_cpu, distinct_indices_gpu
from ptycl.kernels.gpu import gpu_available
from ptycl.kernels.quotas import balanced_slots_cpu, balanced_slots_gpu
from ptycl.kernels.random_keys import (
    merge_topk_cpu,
    merge_topk_gpu,
    random_key_slots_cpu,
    random_key_slots_gpu,
)
from ptycl.kernels.reservoir import (
    last_writer_wins_cpu,
    last_writer_wins_gpu,
    reservoir_slots_cpu,
    reservoir_slots_gpu,
)
from ptycl.kernels.topk import topk_indices
from ptycl.kernels.weighted import weighted_victims_cpu, weighted_victims_gpu

__all__ = [
    "balanced_slots_cpu",
    "balanced_slots_gpu",
    "distinct_indices_cpu",
    "distinct_indices_gpu",
    "gpu_available",
    "last_writer_wins_cpu",
    "last_writer_wins_gpu",
    "merge_topk_cpu",
    "merge_topk_gpu",
    "random_key_slots_cpu",
    "random_key_slots_gpu",
    "reservoir_slots_cpu",
    "reservoir_slots_gpu",
    "topk_indices",
    "weighted_victims_cpu",
    "weighted_victims_gpu",
]
