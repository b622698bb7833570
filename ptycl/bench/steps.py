"""Training steps of the real ContinualTrainer, timed part by part (``train`` and ``scale``).

Design notes: docs/design.md.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ptycl.bench.ranks import rank_main
from ptycl.bench.replay_data import fill_to_steady_state
from ptycl.bench.settings import with_settings
from ptycl.bench.timing import interleaved_rounds
from ptycl.config import Config
from ptycl.io.records import EV_J, ObjectImage, ScanGeometry, ScanMetadata
from ptycl.parallel import Distributed, init_distributed
from ptycl.prep.scan_data import ScanTensors
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.store import RehearsalStore
from ptycl.train.trainer import ContinualTrainer, StreamPosition

MODULE = "ptycl.bench.steps"  # what mpiexec runs on each rank (``rank_main`` below)


@dataclass(frozen=True)
class StepWorkload:
    """Which steps to time: every strategy at every frame size, interleaved."""

    strategies: tuple[str, ...]
    frames: tuple[int, ...]
    batch_size: int  # new rows per step, all ranks together (train.batch_size)
    replay_batch_size: int  # rows per replay draw, all ranks together
    rounds: int  # measured rounds, after one warm-up round
    steps_per_round: int
    # Strategies timed a second time with ``model.compile`` (its compilation falls in the
    # warm-up round), beside the plain ones.
    compiled_strategies: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> StepWorkload:
        return cls(
            **{
                **values,
                "strategies": tuple(values["strategies"]),
                "frames": tuple(values["frames"]),
                "compiled_strategies": tuple(values.get("compiled_strategies", ())),
            }
        )


@dataclass(frozen=True)
class StepParts:
    """Seconds of each part of a step (see the module docstring)."""

    data: float = 0.0
    replay_draw: float = 0.0
    forward_backward: float = 0.0
    allreduce: float = 0.0
    optimizer: float = 0.0
    store_offer: float = 0.0

    @staticmethod
    def mean(parts: list[StepParts]) -> StepParts:
        return StepParts(**{k: float(np.mean([getattr(p, k) for p in parts])) for k in PART_NAMES})


PART_NAMES = tuple(f.name for f in fields(StepParts))


@dataclass(frozen=True)
class StepResult:
    """One variant's figures on one job of ``ranks`` ranks."""

    strategy: str
    frame: int
    ranks: int
    compiled: bool  # model.compile
    samples_per_step: float  # new and replayed, all ranks together
    samples_per_s: float  # median over rounds
    samples_per_s_by_round: list[float]
    seconds_per_step: StepParts  # mean over steps, then over ranks
    step_s: float  # the parts' sum


@dataclass(frozen=True)
class _Round:
    samples: int
    seconds: float
    steps: list[StepParts]


class StepClock:
    """Marks the parts of a trainer's steps through its hooks (see the module docstring)."""

    def __init__(self, trainer: ContinualTrainer) -> None:
        cuda = trainer.device.type == "cuda"
        self.sync: Callable[[], None] = torch.cuda.synchronize if cuda else lambda: None
        self.steps: list[StepParts] = []
        self.draw_s = 0.0
        self._left = 0  # steps this turn may still take
        self._start = self._first_forward = self._optimizer_start = self._optimizer_end = 0.0
        self._forwarded = False
        self._buckets: list[tuple[float, float]] = []
        trainer.replica.register_forward_pre_hook(self._on_forward)
        trainer.optimizer.register_step_pre_hook(self._on_optimizer_start)
        trainer.optimizer.register_step_post_hook(self._on_optimizer_end)
        if isinstance(trainer.replica, DistributedDataParallel):
            trainer.replica.register_comm_hook(None, self._timed_allreduce)
        if trainer.store is not None:
            trainer.store = _TimedStore(trainer.store, self, trainer.device)

    def take_steps(self, trainer: ContinualTrainer, scan: ScanTensors, steps: int) -> _Round:
        """The trainer's next ``steps`` steps on ``scan`` (scan 0, resumed where it paused)."""
        before = trainer.state.costs[-1] if trainer.state.costs else None
        samples, seconds = (before.samples, before.seconds) if before else (0, 0.0)
        first = len(self.steps)
        self._left = steps
        trainer.train_scan(scan, 0, should_stop=self._should_stop, on_step=self._on_step)
        cost = trainer.state.costs[-1]
        return _Round(cost.samples - samples, cost.seconds - seconds, self.steps[first:])

    def _now(self) -> float:
        self.sync()
        return time.perf_counter()

    def _should_stop(self) -> bool:  # the top of a step
        if self._left == 0:
            return True
        self._left -= 1
        self._forwarded, self.draw_s, self._buckets = False, 0.0, []
        self._start = self._now()
        return False

    def _on_forward(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not self._forwarded:  # the replayed batch's forward comes later in the step
            self._forwarded = True
            self._first_forward = self._now()

    def _on_optimizer_start(self, *hook_args: Any) -> None:
        self._optimizer_start = self._now()

    def _on_optimizer_end(self, *hook_args: Any) -> None:
        self._optimizer_end = self._now()

    # bucket: torch.distributed.GradBucket, returns Future[Tensor]; not annotated because DDP
    # compares the annotations with the classes and this module's annotations are strings.
    def _timed_allreduce(self, process_group: Any, bucket):
        launched = time.perf_counter()

        def done(future: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            self._buckets.append((launched, time.perf_counter()))
            return future.value()

        return default_hooks.allreduce_hook(process_group, bucket).then(done)

    def _on_step(self, position: StreamPosition) -> None:  # the end of a step
        end = self._now()
        buckets = self._buckets
        allreduce = max(d for _, d in buckets) - max(s for s, _ in buckets) if buckets else 0.0
        self.steps.append(
            StepParts(
                data=self._first_forward - self._start,
                replay_draw=self.draw_s,
                forward_backward=self._optimizer_start
                - self._first_forward
                - self.draw_s
                - allreduce,
                allreduce=allreduce,
                optimizer=self._optimizer_end - self._optimizer_start,
                store_offer=end - self._optimizer_end,
            )
        )


class _TimedStore(RehearsalStore):
    """The trainer's store, its draws timed (with the drawn batch's move to the device, which
    the trainer's own ``.to`` then finds done)."""

    def __init__(self, store: RehearsalStore, clock: StepClock, device: torch.device) -> None:
        self._store, self._clock, self._device = store, clock, device

    @property
    def capacity(self) -> int:
        return self._store.capacity

    @property
    def seen(self) -> int:
        return self._store.seen

    def __len__(self) -> int:
        return len(self._store)

    def offer(self, samples: ReplaySamples, losses: torch.Tensor | None = None) -> int:
        return self._store.offer(samples, losses)

    def draw(self, n: int) -> ReplaySamples | None:
        self._clock.sync()
        started = time.perf_counter()
        drawn = self._store.draw(n)
        if drawn is not None:
            drawn = drawn.to(self._device, torch.float32)
        self._clock.sync()
        self._clock.draw_s += time.perf_counter() - started
        return drawn

    def state_dict(self) -> dict[str, Any]:
        return self._store.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._store.load_state_dict(state)

    def close(self) -> None:
        self._store.close()


def synthetic_scan(frame: int, rows: int) -> ScanTensors:
    """Random prepared frames and labels, the same on every rank (one plan of batches)."""
    generator = torch.Generator().manual_seed(0)
    geometry = ScanGeometry(8800 * EV_J, 2.0, (75e-6, 75e-6), (frame, frame))
    return ScanTensors(
        metadata=ScanMetadata(scan_id="bench", geometry=geometry),
        path=Path("bench"),
        inputs=torch.rand(rows, 1, frame, frame, generator=generator),
        labels=torch.rand(rows, 2, frame, frame, generator=generator),
        positions_m=np.zeros((rows, 2)),
        truth=ObjectImage(np.zeros((frame, frame), np.complex64), geometry.object_pixel_m),
        support=torch.ones(frame, frame, dtype=torch.bool),
        train_rows=torch.arange(rows),
        holdout_rows=torch.arange(0),
    )


def measure(config: Config, work: StepWorkload, dist: Distributed) -> list[StepResult]:
    """Every variant of ``work`` on this job (collective across its ranks)."""
    variants = [(s, frame, False) for frame in work.frames for s in work.strategies]
    variants += [(s, frame, True) for frame in work.frames for s in work.compiled_strategies]
    trainers, turns = [], {}
    generator = torch.Generator().manual_seed(dist.rank)
    for strategy, frame, compiled in variants:
        variant_config = with_settings(
            config,
            prep={"input_size": frame},
            model={"compile": compiled},
            train={
                "strategy": strategy,
                "batch_size": work.batch_size,
                "replay_batch_size": work.replay_batch_size,
                "steps_per_scan": (work.rounds + 1) * work.steps_per_round,
            },
        )
        trainer = ContinualTrainer.build(variant_config, dist)
        scan = synthetic_scan(frame, rows=max(64, 2 * work.batch_size))
        trainer.arrived(scan)
        if trainer.store is not None:
            per_rank = trainer.store.capacity // dist.world_size
            fill_to_steady_state(trainer.store, per_rank, frame, generator)
        clock = StepClock(trainer)
        trainers.append(trainer)
        turns[strategy, frame, compiled] = functools.partial(
            clock.take_steps, trainer, scan, work.steps_per_round
        )
    rounds = interleaved_rounds(turns, work.rounds)
    for trainer in trainers:
        trainer.close()
    return [_summarise(variant, rounds[variant], dist) for variant in variants]


def _summarise(
    variant: tuple[str, int, bool], rounds: list[_Round], dist: Distributed
) -> StepResult:
    """Samples/s of the slowest rank in each round; parts averaged over steps, then ranks."""
    slowest = [
        max(seconds) for seconds in zip(*dist.allgather([r.seconds for r in rounds]), strict=True)
    ]
    rates = [r.samples / s for r, s in zip(rounds, slowest, strict=True)]
    here = StepParts.mean([step for r in rounds for step in r.steps])
    parts = StepParts.mean(dist.allgather(here))
    strategy, frame, compiled = variant
    return StepResult(
        strategy=strategy,
        frame=frame,
        ranks=dist.world_size,
        compiled=compiled,
        samples_per_step=sum(r.samples for r in rounds) / sum(len(r.steps) for r in rounds),
        samples_per_s=median(rates),
        samples_per_s_by_round=rates,
        seconds_per_step=parts,
        step_s=sum(asdict(parts).values()),
    )


def job_description(dist: Distributed) -> dict[str, Any]:
    return {
        "ranks": dist.world_size,
        "device": str(dist.device),
        "torch_threads_per_rank": torch.get_num_threads(),
    }


def steps_part(params: dict[str, Any]) -> dict[str, Any]:
    """On every rank of a job: ``measure`` with the job's ``Distributed``."""
    config = Config.model_validate(params["config"])
    dist = init_distributed(config.train.device)
    with dist.fail_fast():
        results = measure(config, StepWorkload.from_json(params["workload"]), dist)
    dist.close()
    return {**job_description(dist), "variants": [asdict(r) for r in results]}


def part_params(config: Config, work: StepWorkload) -> dict[str, Any]:
    """What ``steps_part`` takes, as JSON for ``on_ranks``."""
    return {"config": config.model_dump(mode="json"), "workload": asdict(work)}


if __name__ == "__main__":  # one rank of a job (``ptycl.bench.ranks``)
    rank_main({"steps": steps_part})
