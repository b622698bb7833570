"""The per-scan plan: deterministic batches, each training row offered to the store once."""

import pytest
import torch

from ptycl.config import TrainSettings
from ptycl.train.schedule import learning_rate, plan_scan


@pytest.mark.parametrize(("n_rows", "steps", "batch"), [(100, 10, 32), (1000, 10, 32), (37, 5, 8)])
def test_each_row_is_offered_exactly_once_at_its_last_appearance(n_rows, steps, batch):
    plan = plan_scan(n_rows, steps, batch, seed=1, scan_index=2)
    assert plan.rows.shape == (steps, batch)
    flat_rows, flat_offer = plan.rows.flatten(), plan.offer.flatten()
    offered = flat_rows[flat_offer]
    appeared = torch.unique(flat_rows)
    assert torch.equal(torch.sort(offered).values, appeared)  # every row seen is offered once
    for position in torch.nonzero(flat_offer).flatten().tolist():
        assert not (flat_rows[position + 1 :] == flat_rows[position]).any()


def test_plan_is_a_pure_function_of_seed_and_scan():
    assert torch.equal(plan_scan(50, 4, 8, 0, 1).rows, plan_scan(50, 4, 8, 0, 1).rows)
    assert not torch.equal(plan_scan(50, 4, 8, 0, 1).rows, plan_scan(50, 4, 8, 0, 2).rows)


def test_learning_rate_schedules():
    cosine = TrainSettings(lr=1e-3, lr_min=1e-4, schedule="cosine")
    assert learning_rate(cosine, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(cosine, 50, 100) == pytest.approx(5.5e-4)
    cyclic = TrainSettings(lr=1e-3, lr_min=1e-4, schedule="cyclic")
    assert learning_rate(cyclic, 0, 100) == pytest.approx(1e-4)
    assert learning_rate(cyclic, 25, 100) == pytest.approx(1e-3)
    assert learning_rate(TrainSettings(schedule="constant", lr=2e-3), 7, 10) == 2e-3
