"""ptycl: continual learning for ptychography on streaming scans.

Stages (one subpackage each, talking through the typed records in ``ptycl.io.records``):
simulate -> io -> prep -> train (+ rehearsal, kernels) -> eval / recon.
"""

__version__ = "0.1.0"
