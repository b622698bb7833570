"""``ptycl train`` on every MPI rank, exactly as ``python -m ptycl train ARGS`` runs it.

Used by test_train_distributed with two test-only switches, read from the environment by this
script alone (production code knows nothing of them):

- PTYCL_TEST_PARAMS_DIR=DIR: after the run, each rank saves the parameters and buffers of the
  model it trained to DIR/model-rank{r}.pt, so the test can compare the replicas.
- PTYCL_TEST_FAIL_RANK=r and PTYCL_TEST_FAIL_AT=n: rank r's n-th training forward pass raises,
  as a device error on one rank would, while the other ranks wait for it in a collective.

The model is found through torch's global forward hook (the PtychoNN instance that runs in
training mode), which changes nothing in how it trains.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from mpi4py import MPI
from torch.nn.modules.module import register_module_forward_hook

from ptycl.cli import main
from ptycl.model.ptychonn import PtychoNN

RANK = MPI.COMM_WORLD.rank
FAIL_RANK = int(os.environ.get("PTYCL_TEST_FAIL_RANK", "-1"))
FAIL_AT = int(os.environ.get("PTYCL_TEST_FAIL_AT", "0"))


class TrainedModel:
    def __init__(self) -> None:
        self.model: PtychoNN | None = None
        self.forwards = 0

    def __call__(self, module: torch.nn.Module, args: object, output: object) -> None:
        if not (isinstance(module, PtychoNN) and module.training):
            return
        self.model = module
        self.forwards += 1
        if RANK == FAIL_RANK and self.forwards == FAIL_AT:
            raise RuntimeError(f"injected failure in training forward pass {self.forwards}")


seen = TrainedModel()
register_module_forward_hook(seen)
status = main(sys.argv[1:])
params_dir = os.environ.get("PTYCL_TEST_PARAMS_DIR")
if params_dir and seen.model is not None:
    torch.save(seen.model.state_dict(), Path(params_dir) / f"model-rank{RANK}.pt")
sys.exit(status)
