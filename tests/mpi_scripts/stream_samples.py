"""Samples whose every part names the item: what the MPI store scripts offer and check.

Item ``i`` has an input frame filled with i, labels filled with -i, stored outputs filled with
i + 0.5, and step i, so a drawn sample's frames can be checked against its bookkeeping.
"""

from __future__ import annotations

import numpy as np
import torch

from ptycl.rehearsal.samples import ReplaySamples

FRAME = (2, 2)


def items(ids: np.ndarray, scans: np.ndarray | int = 0) -> ReplaySamples:
    n = len(ids)
    ident = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    plane = ident.double().view(n, 1, 1, 1).expand(n, 1, *FRAME)
    return ReplaySamples(
        inputs=plane.float().clone(),
        labels=(-plane).expand(n, 2, *FRAME).float().clone(),
        outputs=(plane + 0.5).expand(n, 2, *FRAME).float().clone(),
        scan_index=torch.as_tensor(np.broadcast_to(scans, (n,)).astype(np.int64)),
        step=ident.clone(),
    )


def loss_of(ids: np.ndarray) -> torch.Tensor:
    """A fixed pseudo-random loss per item in (0, 1]."""
    return torch.as_tensor(((np.asarray(ids) * 7919) % 100 + 1) / 100.0)


def check_intact(drawn: ReplaySamples) -> np.ndarray:
    """The drawn items' ids, after checking frames and bookkeeping agree and ids are distinct."""
    ids = drawn.step.numpy()
    planes = torch.cat([drawn.inputs, drawn.labels, drawn.outputs], dim=1).double()
    expected = torch.as_tensor(ids).double().view(-1, 1, 1, 1) * torch.tensor(
        [1, -1, -1, 1, 1]
    ).view(1, 5, 1, 1)
    expected[:, 3:] += 0.5
    assert torch.equal(planes, expected.expand_as(planes)), (
        "a drawn sample's frames do not match its step"
    )
    assert len(np.unique(ids)) == len(ids), f"a draw repeated a sample: {sorted(ids)}"
    return ids


def stream_ids(sizes: np.ndarray, step: int, rank: int, first: int = 0) -> np.ndarray:
    """Ids rank ``rank`` offers at ``step``: items are numbered in stream order (step by step,
    rank 0's first), so ``sizes`` (steps, ranks) fixes every rank's ids."""
    before = first + int(sizes[:step].sum()) + int(sizes[step, :rank].sum())
    return np.arange(before, before + sizes[step, rank], dtype=np.int64)
