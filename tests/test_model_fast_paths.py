"""The model's fast paths (``model.precision``, ``model.channels_last``, ``model.compile``)
against the plain path.

Tolerances: channels-last changes only the memory layout, so outputs agree to float32
summation order (1e-5). bfloat16 autocast keeps 8 mantissa bits in the convolutions, an error
of 2^-8 per layer that the 13 layers compound: on a network at initialisation, whose outputs
spread by 0.15 across a batch, the bf16 outputs differ from the float32 ones by 0.006 on
average and 0.07 at most (measured; amplitude in (0, 2), phase in radians), so the test allows
a mean of 0.015 and a maximum of 0.15; and a short training run reaches a loss within 10% of
float32's.
These run on the CPU here; on a GPU (``device`` tool) the same tests run on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from ptycl.config import Config, ModelSettings
from ptycl.model.ptychonn import PtychoNN, build_model
from ptycl.train.losses import task_loss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pair(device: str, size: int = 32, **fast: object) -> tuple[PtychoNN, PtychoNN]:
    """A plain model and a fast one with the same weights, input statistics fitted."""
    torch.manual_seed(0)
    shape = {"width": 8, "depth": 3} if size >= 32 else {"width": 4, "depth": 2}
    plain = build_model(ModelSettings(**shape), size).to(device)
    frames = torch.rand(64, 1, size, size, device=device)
    plain.fit_input_statistics(frames)
    fast_model = build_model(ModelSettings(**shape, **fast), size).to(device)
    fast_model.load_state_dict(plain.state_dict())
    return plain, fast_model


def _train(model: PtychoNN, frames: torch.Tensor, labels: torch.Tensor) -> float:
    """Adam steps on the batches of (steps, n, ...) ``frames`` and ``labels``: the last loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x, y in zip(frames, labels, strict=True):
        loss = task_loss(model(x), y, "mae", None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_plain_outputs(device: str) -> None:
    plain, fast = _pair(device, channels_last=True)
    assert fast.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    frames = torch.rand(16, 1, 32, 32, device=device)
    a, b = plain(frames).stacked(), fast(frames).stacked()
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_stays_within_its_tolerance(device: str) -> None:
    plain, fast = _pair(device, precision="bf16")
    frames = torch.rand(16, 1, 32, 32, device=device)
    a, b = plain(frames).stacked(), fast(frames).stacked()
    assert b.dtype == torch.float32  # the heads are float32 whatever the convolutions ran in
    difference = (b - a).abs()
    assert difference.mean().item() < 0.015
    assert difference.max().item() < 0.15
    assert not torch.equal(a, b)  # the switch did change the arithmetic


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_and_channels_last_train_like_the_plain_path(device: str) -> None:
    """12 Adam steps on the same batches: the final losses within 10% of each other."""
    generator = torch.Generator().manual_seed(1)
    # 16² frames and a small network: CPUs without bf16 instructions emulate it slowly.
    frames = torch.rand(12, 4, 1, 16, 16, generator=generator).to(device)
    labels = torch.rand(12, 4, 2, 16, 16, generator=generator).to(device)
    labels[:, :, 1] = labels[:, :, 1] - 0.5  # phase around 0
    plain, fast = _pair(device, 16, precision="bf16", channels_last=True)
    losses = {
        name: _train(model, frames, labels) for name, model in (("plain", plain), ("fast", fast))
    }
    assert abs(losses["fast"] - losses["plain"]) <= 0.1 * losses["plain"]


def test_a_fast_models_checkpoint_loads_into_a_plain_one() -> None:
    _, fast = _pair("cpu", precision="bf16", channels_last=True)
    plain = build_model(ModelSettings(width=8, depth=3), 32)
    plain.load_state_dict(fast.state_dict())
    frames = torch.rand(4, 1, 32, 32)
    fast.autocast_dtype = None  # the same arithmetic, so the weights must give the same outputs
    torch.testing.assert_close(plain(frames).stacked(), fast(frames).stacked())


def test_the_switches_are_validated_in_the_config() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="precision"):
        Config.model_validate({"model": {"precision": "fp8"}})


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_gives_the_plain_outputs_and_trains_alike(device: str) -> None:
    """``model.compile``: Inductor fuses and reorders float32 sums, nothing more. Measured at
    width 8, 32²: outputs within 2e-5 of the plain path (allowed 1e-4). After 6 Adam steps on
    the same batches the losses agree to 2e-5 (allowed 1e-3) and the outputs by 0.002 on
    average (allowed 0.006): Adam's first steps move every weight by about the learning rate
    whatever its gradient's size, so rounding-level differences grow; the plain path itself,
    given inputs scaled by 1 + 1e-6, ends 1.7e-4 away on average."""
    plain, fast = _pair(device, compile=True)
    assert set(fast.state_dict()) == set(plain.state_dict())  # checkpoints load either way
    generator = torch.Generator().manual_seed(2)
    frames = torch.rand(6, 8, 1, 32, 32, generator=generator).to(device)
    labels = torch.rand(6, 8, 2, 32, 32, generator=generator).to(device)
    probe = torch.rand(16, 1, 32, 32, generator=generator).to(device)
    torch.testing.assert_close(fast(probe).stacked(), plain(probe).stacked(), atol=1e-4, rtol=0)
    losses = {
        name: _train(model, frames, labels) for name, model in (("plain", plain), ("fast", fast))
    }
    difference = (fast(probe).stacked() - plain(probe).stacked()).abs()
    assert abs(losses["fast"] - losses["plain"]) < 1e-3
    assert difference.mean().item() < 6e-3
