"""The frames a store holds: one preallocated tensor of rows, one row per sample.

A row is the sample's five planes side by side, (5, H, W): the input frame, the label
(amplitude, phase) and the stored DER output (amplitude, phase), in float32 or float16. One
contiguous row per sample means a sample is written, read and sent over MPI as one block.
The bookkeeping (scan, step, score) lives in the ``SlotTable``, not here.

Memory is allocated once, up front: host memory, pinned when CUDA is available so that a
replay batch copies to the GPU asynchronously, or GPU memory when asked.
"""

from __future__ import annotations

import numpy as np
import torch

from ptycl.rehearsal.samples import ReplaySamples

PLANES = 5  # input, label amplitude, label phase, output amplitude, output phase


def pack(samples: ReplaySamples, dtype: torch.dtype) -> torch.Tensor:
    """(n, 5, H, W) rows of ``dtype`` from a batch of samples, on the samples' device."""
    return torch.cat([samples.inputs, samples.labels, samples.outputs], dim=1).to(dtype)


def unpack(rows: torch.Tensor, scan_index: np.ndarray, step: np.ndarray) -> ReplaySamples:
    """Samples viewing ``rows`` (n, 5, H, W), with their bookkeeping from the slot table."""

    def as_tensor(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(rows.device)

    return ReplaySamples(
        inputs=rows[:, 0:1],
        labels=rows[:, 1:3],
        outputs=rows[:, 3:5],
        scan_index=as_tensor(scan_index),
        step=as_tensor(step),
    )


class PayloadShard:
    def __init__(
        self,
        rows: int,
        frame_shape: tuple[int, int],
        *,
        half_precision: bool,
        device: torch.device | str,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if half_precision else torch.float32
        pin = self.device.type == "cpu" and torch.cuda.is_available()
        self.planes = torch.zeros(
            (rows, PLANES, *frame_shape), dtype=self.dtype, device=self.device, pin_memory=pin
        )

    @property
    def rows(self) -> int:
        return self.planes.shape[0]

    @property
    def row_nbytes(self) -> int:
        return self.planes[0].numel() * self.dtype.itemsize

    def write(self, rows: np.ndarray, values: torch.Tensor) -> None:
        """``planes[rows[i]] = values[i]``; ``values`` (k, 5, H, W) on any device, of any float type."""
        if len(rows):
            self.planes[torch.from_numpy(rows).to(self.device)] = values.to(self.device, self.dtype)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """A copy of ``planes[rows]``, (k, 5, H, W), on the shard's device."""
        return self.planes[
            torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device)
        ]
