"""How a scan that arrives frame by frame is cut into training segments, and what each costs.

Design notes: docs/design.md.
"""

from __future__ import annotations

import math

import torch

from ptycl.prep.scan_data import split_rows


def cumulative_steps(frames: int, steps_per_scan: int, nominal_frames: int) -> int:
    """T(m): steps owed to the first ``frames`` frames of a scan (round half up)."""
    return math.floor(steps_per_scan * frames / nominal_frames + 0.5)


def segment_steps(start: int, stop: int, steps_per_scan: int, nominal_frames: int) -> int:
    """Optimiser steps for frames [start, stop): the share of the scan's budget, at least 1."""
    owed = cumulative_steps(stop, steps_per_scan, nominal_frames) - cumulative_steps(
        start, steps_per_scan, nominal_frames
    )
    return max(1, owed)


def segment_bounds(
    index: int, segment_frames: int, frames_available: int, complete: bool
) -> tuple[int, int] | None:
    """Frames [start, stop) of segment ``index`` if it is ready, else None."""
    start = index * segment_frames
    stop = start + segment_frames
    if frames_available >= stop:
        return start, stop
    if complete and frames_available > start:
        return start, frames_available
    return None


def segment_count(frames_total: int, segment_frames: int) -> int:
    return math.ceil(frames_total / segment_frames)


def segment_seed(run_seed: int, task: int, index: int) -> int:
    """Seed of a segment's train/held-out split: fixed by the run, the scan's task, the segment."""
    return (run_seed * 1_000_003 + task * 10_007 + index) % (2**63)


def holdout_rows(
    frames_total: int, segment_frames: int, holdout_fraction: float, run_seed: int, task: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows) of the whole scan: the union of its segments' splits."""
    train, held = [], []
    for index in range(segment_count(frames_total, segment_frames)):
        start = index * segment_frames
        stop = min(start + segment_frames, frames_total)
        t, h = split_rows(stop - start, holdout_fraction, segment_seed(run_seed, task, index))
        train.append(t + start)
        held.append(h + start)
    if not train:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty
    return torch.cat(train), torch.cat(held)
