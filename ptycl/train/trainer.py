"""The continual trainer: one model, one optimiser, one store, a stream of scans.

Built from the one ``Config`` by ``ContinualTrainer.build``; every component is an explicit
attribute (model, optimiser, store, history), nothing lives in module globals. A step is

    new batch -> forward -> task loss
    (+ replay draws -> forward -> ER / DER / DER++ terms)
    -> backward -> optimiser step -> offer the new batch (with its pre-step outputs) to the store
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ptycl.config import Config
from ptycl.model.ptychonn import PtychoNN, build_model
from ptycl.rehearsal.local_store import LocalReservoirStore, samples_for_bytes
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.store import RehearsalStore
from ptycl.train.losses import der_distance, per_sample_task_loss, task_loss
from ptycl.train.scan_data import ScanTensors
from ptycl.train.schedule import learning_rate, plan_scan

log = logging.getLogger("ptycl.train")

REPLAY_STRATEGIES = ("er", "der", "derpp")


@dataclass
class ScanCost:
    """Training cost of one scan: forward samples (new and replayed alike) and wall time."""

    scan_id: str
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0


@dataclass
class StreamPosition:
    """Where the run is in the stream: the next step to take."""

    scan_index: int = 0
    step_in_scan: int = 0
    global_step: int = 0


@dataclass
class TrainerState:
    position: StreamPosition = field(default_factory=StreamPosition)
    costs: list[ScanCost] = field(default_factory=list)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def build_store(config: Config, device: torch.device) -> RehearsalStore | None:
    if config.train.strategy not in REPLAY_STRATEGIES:
        return None
    settings = config.train.store
    frame_shape = (config.prep.input_size, config.prep.input_size)
    capacity = settings.capacity_samples or samples_for_bytes(
        settings.capacity_bytes, frame_shape, settings.half_precision
    )
    return LocalReservoirStore(
        capacity, frame_shape, half_precision=settings.half_precision, seed=config.run.seed
    )


class ContinualTrainer:
    def __init__(
        self, config: Config, model: PtychoNN, store: RehearsalStore | None, device: torch.device
    ) -> None:
        self.config = config
        self.settings = config.train
        self.device = device
        self.model = model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.lr)
        self.store = store
        self.state = TrainerState()
        # The cumulative strategy retrains on every scan seen: it keeps them all (the cost
        # the rehearsal strategies avoid).
        self.pool: list[ScanTensors] = []
        # The field of view the model learns: the first scan's illuminated support, kept for
        # the whole run (one beamline set-up per run) and saved with the model, so replayed
        # samples, evaluation and reconstruction all score the same pixels.
        self.support: torch.Tensor | None = None

    @classmethod
    def build(cls, config: Config) -> ContinualTrainer:
        torch.manual_seed(config.run.seed)  # model initialisation
        device = resolve_device(config.train.device)
        return cls(
            config,
            build_model(config.model, config.prep.input_size),
            build_store(config, device),
            device,
        )

    # -- the stream -----------------------------------------------------------------------

    def steps_for_scan(self, scan_index: int) -> int:
        if self.settings.strategy == "cumulative":
            return self.settings.steps_per_scan * (scan_index + 1)
        return self.settings.steps_per_scan

    def arrived(self, scan: ScanTensors) -> None:
        """A scan joined the stream (also called for the scans before a resume point)."""
        if self.support is None:
            self.support = scan.support.to(self.device)
        if not self.model.input_fitted:
            self.model.fit_input_statistics(scan.inputs[scan.train_rows])
        if self.settings.strategy == "cumulative":
            self.pool.append(scan)

    def train_scan(
        self,
        scan: ScanTensors,
        scan_index: int,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[StreamPosition], None] | None = None,
    ) -> bool:
        """Train on one scan from the current position; False if stopped before its end.

        The scan must have been passed to ``arrived`` first.
        """
        inputs, labels, scan_of_row = self._training_rows(scan, scan_index)
        steps = self.steps_for_scan(scan_index)
        plan = plan_scan(
            len(inputs), steps, self.settings.batch_size, self.config.run.seed, scan_index
        )
        position = self.state.position
        if position.scan_index != scan_index or position.step_in_scan == 0:
            self.state.position = position = StreamPosition(scan_index, 0, position.global_step)
            self.state.costs.append(ScanCost(scan.scan_id))
        cost = self.state.costs[-1]
        self.model.train()
        while position.step_in_scan < steps:
            if should_stop():
                return False
            started = time.perf_counter()
            rows = plan.rows[position.step_in_scan]
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.settings, position.step_in_scan, steps)
            samples, outputs, losses = self._step(inputs[rows], labels[rows])
            offered = rows[plan.offer[position.step_in_scan]]
            if self.store is not None and len(offered):
                keep = plan.offer[position.step_in_scan]
                self.store.offer(
                    ReplaySamples(
                        inputs=inputs[offered],
                        labels=labels[offered],
                        outputs=outputs[keep],
                        scan_index=scan_of_row[offered],
                        step=torch.full((len(offered),), position.global_step, dtype=torch.int64),
                    ),
                    losses[keep],
                )
            cost.steps += 1
            cost.samples += samples
            cost.seconds += time.perf_counter() - started
            position.step_in_scan += 1
            position.global_step += 1
            if on_step is not None:
                on_step(position)
        return True

    def _training_rows(
        self, scan: ScanTensors, scan_index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scans = self.pool if self.settings.strategy == "cumulative" else [scan]
        first_index = scan_index - len(scans) + 1
        inputs = torch.cat([s.inputs[s.train_rows] for s in scans])
        labels = torch.cat([s.labels[s.train_rows] for s in scans])
        scan_of_row = torch.cat(
            [
                torch.full((len(s.train_rows),), first_index + k, dtype=torch.int64)
                for k, s in enumerate(scans)
            ]
        )
        return inputs, labels, scan_of_row

    def _step(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """One optimiser step; returns forward samples, the new batch's pre-step outputs and losses."""
        kind, strategy = self.settings.loss, self.settings.strategy
        predicted = self.model(inputs.to(self.device, non_blocking=True))
        support = self.support
        per_sample = per_sample_task_loss(
            predicted, labels.to(self.device, non_blocking=True), kind, support
        )
        loss = per_sample.mean()
        samples = len(inputs)
        if strategy in REPLAY_STRATEGIES and self.store is not None:
            replay_size = self.settings.replay_batch_size
            first = self.store.draw(replay_size)
            if first is not None:
                first = first.to(self.device, torch.float32)
                replayed = self.model(first.inputs)
                samples += len(first)
                if strategy == "er":
                    loss = loss + task_loss(replayed, first.labels, kind, support)
                else:
                    loss = loss + self.settings.alpha * der_distance(
                        replayed, first.outputs, support
                    )
            if strategy == "derpp":
                second = self.store.draw(replay_size)
                if second is not None:
                    second = second.to(self.device, torch.float32)
                    samples += len(second)
                    loss = loss + self.settings.beta * task_loss(
                        self.model(second.inputs), second.labels, kind, support
                    )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return samples, predicted.stacked().detach().cpu(), per_sample.detach().cpu()

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        position = self.state.position
        return {
            "model": self.model.state_dict(),
            "support": None if self.support is None else self.support.cpu(),
            "optimizer": self.optimizer.state_dict(),
            "store": self.store.state_dict() if self.store is not None else None,
            "position": [position.scan_index, position.step_in_scan, position.global_step],
            "costs": [[c.scan_id, c.steps, c.samples, c.seconds] for c in self.state.costs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state["support"] is not None:
            self.support = state["support"].to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.store is not None:
            self.store.load_state_dict(state["store"])
        self.state = TrainerState(
            position=StreamPosition(*state["position"]),
            costs=[
                ScanCost(scan_id, steps, samples, seconds)
                for scan_id, steps, samples, seconds in state["costs"]
            ],
        )
