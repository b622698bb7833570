"""Sample-selection kernels of the rehearsal store, each as a Numba CPU twin and a CuPy GPU twin.

Installed as ``ptycl.kernels`` (pyproject maps this folder there). Call them through
``ptycl.rehearsal.select``, which picks the twin from where the inputs live and checks them.

Kernels never draw random numbers: the caller passes uniforms in [0, 1) (float64),
exponential draws or keys, so the two twins given the same inputs return identical outputs.
Ties are broken by index, in the order documented in ``ptycl.kernels.topk``.

=====================  ===========================================================
reservoir              Algorithm R slots for a batch; last-writer-wins resolution
random_keys            top-M random-key reservoir; exact top-k merge across ranks
quotas                 per-group balanced quotas (class-balanced reservoir)
weighted               k victims without replacement, probability ∝ weight
draws                  k distinct indices from [0, n) (Floyd)
=====================  ===========================================================
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
