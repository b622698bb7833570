"""The continual trainer: one model, one optimiser, one store, a stream of scans.

Design notes: docs/design.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ptycl.config import Config, check_same_learning_settings, learning_settings
from ptycl.errors import ConfigError, TrainingDiverged
from ptycl.model.ptychonn import ModelOutput, PtychoNN, build_model
from ptycl.parallel import Distributed, resolve_device
from ptycl.prep.scan_data import ScanTensors
from ptycl.rehearsal.local_store import LocalReservoirStore, samples_per_rank_for_bytes
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.rehearsal.store import RehearsalStore
from ptycl.train.losses import per_sample_task_loss
from ptycl.train.schedule import learning_rate, plan_scan
from ptycl.train.strategies import ReplayTerms, strategy_named

log = logging.getLogger("ptycl.train")


@dataclass
class ScanCost:
    """Training cost of one scan: forward samples (new and replayed, all ranks together) and
    wall time."""

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
    newest_task: int = -1  # the latest scan index training has begun on


def build_store(config: Config, dist: Distributed) -> RehearsalStore | None:
    """The rehearsal store of a replay strategy: one process's, or the global one over
    ``dist.comm`` (capacities are per rank, see ``StoreSettings``); None without replay."""
    if strategy_named(config.train.strategy).draws == 0:
        return None
    settings = config.train.store
    frame_shape = (config.prep.input_size, config.prep.input_size)
    per_rank = settings.capacity_samples or samples_per_rank_for_bytes(
        settings.capacity_bytes,
        frame_shape,
        half_precision=settings.half_precision,
        policy=settings.policy,
        ranks=dist.world_size,
    )
    if per_rank < 1:
        raise ConfigError(
            "<config>",
            "train.store.capacity_bytes",
            f"{settings.capacity_bytes} bytes per rank hold no sample of {frame_shape[0]}x"
            f"{frame_shape[1]} (set at least one sample's worth, or use capacity_samples)",
        )
    common = {
        "policy": settings.policy,
        "half_precision": settings.half_precision,
        "device": settings.device,
        "seed": config.run.seed,
    }
    if not dist.is_distributed:
        return LocalReservoirStore(per_rank, frame_shape, **common)
    from ptycl.rehearsal.distributed_store import DistributedRehearsalStore  # imports MPI

    return DistributedRehearsalStore(
        dist.comm, per_rank, frame_shape, prefetch=settings.prefetch, **common
    )


def _check_batches_cover_ranks(config: Config, dist: Distributed) -> None:
    sizes = {"train.batch_size": config.train.batch_size}
    if strategy_named(config.train.strategy).draws:
        sizes["train.replay_batch_size"] = config.train.replay_batch_size
    for key, size in sizes.items():
        if size < dist.world_size:
            raise ConfigError(
                "<config>",
                key,
                f"{size} is the batch of all ranks together and this job has "
                f"{dist.world_size} ranks: give every rank at least one sample",
            )


def require_finite(model: torch.nn.Module, loss: torch.Tensor, position: StreamPosition) -> None:
    """Stop before a step that would make the weights non-finite: from then on nothing the run
    learns or checkpoints is of use. The gradients are the same on every rank (averaged), so
    every rank stops at the same step; the last checkpoint stays as it was."""
    norms = [torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]
    if bool(torch.isfinite(torch.stack([loss.detach(), *norms])).all()):
        return
    raise TrainingDiverged(
        f"step {position.step_in_scan} of scan {position.scan_index}: the loss or a "
        "gradient is not finite; stopped before the weights took it (the last checkpoint "
        "is kept): lower train.lr, or look for frames no detector records"
    )


class ContinualTrainer:
    def __init__(
        self, config: Config, model: PtychoNN, store: RehearsalStore | None, dist: Distributed
    ) -> None:
        self.config = config
        self.settings = config.train
        self.strategy = strategy_named(config.train.strategy)
        self.dist = dist
        self.device = dist.device
        # ``model`` is the module itself (evaluation, checkpoints, reconstruction use it);
        # ``replica`` is what training steps call: the model wrapped in DDP across ranks.
        self.model = model.to(self.device)
        self.replica: torch.nn.Module = self.model
        if dist.is_distributed:
            _check_batches_cover_ranks(config, dist)
            self.replica = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.lr)
        self.store = store
        self.state = TrainerState()
        # Every scan seen, for a strategy that retrains on them all (the cost rehearsal avoids).
        self.pool: list[ScanTensors] = []
        # The pixels each scan's frames say something about: the disc of its own probe, by
        # scan index (new and replayed samples alike are scored on their scan's), and the
        # newest one, saved with the model for reconstruction.
        self.supports: dict[int, torch.Tensor] = {}
        self.support: torch.Tensor | None = None
        # The stream's length where it is known in advance (``ptycl train``), for a strategy
        # whose budget depends on it.
        self.scans_in_stream: int | None = None

    @classmethod
    def build(cls, config: Config, dist: Distributed | None = None) -> ContinualTrainer:
        """The trainer of ``config``: in this process alone (``dist`` None), or as one rank of
        a data-parallel job (collective then: every rank builds at the same time)."""
        dist = dist or Distributed.single(resolve_device(config.train.device))
        torch.manual_seed(config.run.seed)  # model initialisation, the same on every rank
        return cls(
            config,
            build_model(config.model, config.prep.input_size),
            build_store(config, dist),
            dist,
        )

    def close(self) -> None:
        """Release the store (collective for the distributed store: every rank, at the end)."""
        if self.store is not None:
            self.store.close()

    # -- the stream -----------------------------------------------------------------------

    def steps_for_scan(self, scan_index: int) -> int:
        return self.strategy.steps_for_scan(
            self.settings.steps_per_scan, scan_index, self.scans_in_stream
        )

    def arrived(self, scan: ScanTensors) -> None:
        """A scan joined the stream (also called for the scans before a resume point)."""
        if self.support is None:
            self.support = scan.support.to(self.device)
        # A spread needs two frames: after a one-frame scan the model stays unfitted (identity)
        # and fits on the next scan, not on NaN.
        if not self.model.input_fitted and len(scan.train_rows) >= 2:
            self.model.fit_input_statistics(scan.inputs[scan.train_rows])
        if self.strategy.keeps_every_scan:
            self.pool.append(scan)

    def train_scan(
        self,
        scan: ScanTensors,
        scan_index: int,
        steps: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[StreamPosition], None] | None = None,
    ) -> bool:
        """Train on one scan from the current position; False if stopped before its end.

        ``steps``: the scan's budget, the strategy's (``steps_for_scan``) when None. The scan
        must have been passed to ``arrived`` first. Collective in a data-parallel
        job: every rank trains the same scan from the same position, and ``should_stop`` must
        answer the same on every rank (``Distributed.any``).
        """
        self.supports[scan_index] = scan.support.to(self.device)
        self.support = self.supports[scan_index]
        inputs, labels, scan_of_row = self._training_rows(scan, scan_index)
        if steps is None:
            steps = self.steps_for_scan(scan_index)
        plan = plan_scan(
            len(inputs), steps, self.settings.batch_size, self.config.run.seed, scan_index
        )
        position = self._position_in(scan, scan_index)
        cost = self.state.costs[-1]
        if scan_index > self.state.newest_task:
            self._begin_task(scan_index, inputs)
        self.replica.train()
        share = self.dist.share(self.settings.batch_size)  # this rank's part of each batch
        while position.step_in_scan < steps:
            if should_stop():
                return False
            started = time.perf_counter()
            rows = plan.rows[position.step_in_scan][share]
            last_seen = plan.offer[position.step_in_scan][share]
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.settings, position.step_in_scan, steps)
            samples, outputs, losses = self._step(inputs[rows], labels[rows], scan_of_row[rows])
            if self.store is not None:  # collective under MPI: every rank offers, maybe nothing
                offered = rows[last_seen]
                self.store.offer(
                    ReplaySamples(
                        inputs=inputs[offered],
                        labels=labels[offered],
                        outputs=outputs[last_seen],
                        scan_index=scan_of_row[offered],
                        step=torch.full((len(offered),), position.global_step, dtype=torch.int64),
                    ),
                    losses[last_seen],
                )
            cost.steps += 1
            cost.samples += samples
            cost.seconds += time.perf_counter() - started
            position.step_in_scan += 1
            position.global_step += 1
            if on_step is not None:
                on_step(position)
        return True

    def _position_in(self, scan: ScanTensors, scan_index: int) -> StreamPosition:
        """Where training on ``scan`` goes on: its first step unless stopped inside it, with
        its cost entry last in ``state.costs``."""
        position = self.state.position
        if position.scan_index != scan_index or position.step_in_scan == 0:
            self.state.position = position = StreamPosition(scan_index, 0, position.global_step)
            costs = self.state.costs
            # A run stopped before this scan's first step left its entry, empty, behind.
            if not costs or costs[-1].scan_id != scan.scan_id or costs[-1].steps:
                costs.append(ScanCost(scan.scan_id))
        return position

    def _begin_task(self, scan_index: int, inputs: torch.Tensor) -> None:
        """A new scan starts training: under ``optimizer_state: fresh_per_scan`` Adam forgets
        its moment estimates (a watched scan's later segments, and scans written at the same
        time and trained in turn, keep theirs).

        Why: Adam's second moments decay over ~1/(1 - 0.999) = 1000 steps, longer than a scan's
        budget, so carried over, the previous scans' gradient sizes set each weight's step on
        the new one and the model stops learning (docs/results-continual.md).
        """
        if self.settings.optimizer_state == "fresh_per_scan":
            self.optimizer.state.clear()  # Adam fills it again at its next step
        if self.strategy.fresh_model_per_scan:
            torch.manual_seed(self.config.run.seed + scan_index)
            fresh = build_model(self.config.model, self.config.prep.input_size)
            self.model.load_state_dict(fresh.state_dict())
            if len(inputs) >= 2:
                self.model.fit_input_statistics(inputs)
            self.optimizer.state.clear()
        self.state.newest_task = scan_index

    def _training_rows(
        self, scan: ScanTensors, scan_index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scans = self.pool if self.strategy.keeps_every_scan else [scan]
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

    def _supports_of(self, scan_index: torch.Tensor) -> torch.Tensor:
        """(n, S, S): the support of each sample's scan."""
        return torch.stack([self.supports[int(i)] for i in scan_index])

    def _step(
        self, inputs: torch.Tensor, labels: torch.Tensor, scan_index: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """One optimiser step on this rank's share of the batch.

        Returns the forward samples of all ranks together, and this share's pre-step outputs
        and per-sample task losses. Every term is weighted by ``_weight`` so that DDP's mean
        of the ranks' gradients is the gradient of each term's mean over all ranks' samples
        (with one process the weights are 1).

        The replay draws go through the model in one forward: GroupNorm normalises each sample
        alone, so a sample's output does not depend on what shares its batch, and a larger
        batch costs less per sample. The new batch keeps its own forward: merged with the
        draws, the activations at 128² outgrow a CPU's caches (docs/performance.md).
        """
        settings = self.settings
        predicted = self.replica(inputs.to(self.device, non_blocking=True))
        per_sample = per_sample_task_loss(
            predicted,
            labels.to(self.device, non_blocking=True),
            settings.loss,
            self._supports_of(scan_index),
        )
        loss = per_sample.mean() * self._weight(len(inputs), self.settings.batch_size)
        samples = self.settings.batch_size
        draws = self._draw_replay()
        drawn = [(index, draw) for index, draw in enumerate(draws) if draw is not None]
        if drawn:
            together = self.replica(torch.cat([draw.inputs for _, draw in drawn])).stacked()
            drawn_total = self._replay_drawn_total()
            for (index, draw), values in zip(
                drawn, together.split([len(draw) for _, draw in drawn]), strict=True
            ):
                output = ModelOutput.from_stacked(values)
                samples += drawn_total
                terms = ReplayTerms(
                    settings.loss, settings.alpha, settings.beta, self._supports_of(draw.scan_index)
                )
                term = self.strategy.replay_term(index, output, draw, terms)
                loss = loss + term * self._weight(len(draw), drawn_total)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP, also averages the gradients over the ranks
        require_finite(self.model, loss, self.state.position)
        self.optimizer.step()
        return samples, predicted.stacked().detach().cpu(), per_sample.detach().cpu()

    def _draw_replay(self) -> list[ReplaySamples | None]:
        """This rank's share of each of the strategy's replay draws of the step, on the
        device; None for a draw from an empty store. Collective under MPI, as each draw is."""
        if self.store is None:
            return []
        share = self.dist.share_sizes(self.settings.replay_batch_size)[self.dist.rank]
        draws = [self.store.draw(share) for _ in range(self.strategy.draws)]
        return [None if d is None else d.to(self.device, torch.float32) for d in draws]

    def _replay_drawn_total(self) -> int:
        """Samples one draw returns on all ranks together: each rank draws its share, and the
        store holds the same number of samples on every rank's view, so each knows them all."""
        held = len(self.store) if self.store is not None else 0
        return sum(min(n, held) for n in self.dist.share_sizes(self.settings.replay_batch_size))

    def _weight(self, here: int, total: int) -> float:
        """Weight of a mean over this rank's ``here`` of ``total`` samples: DDP averages the
        ranks' gradients, so world_size * here / total makes the mean over all ``total``."""
        return self.dist.world_size * here / total

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly; in a data-parallel job "store" is this rank's shard."""
        position = self.state.position
        return {
            "model": self.model.state_dict(),
            "support": None if self.support is None else self.support.cpu(),
            "supports": {i: support.cpu() for i, support in self.supports.items()},
            "optimizer": self.optimizer.state_dict(),
            "store": self.store.state_dict() if self.store is not None else None,
            "position": [position.scan_index, position.step_in_scan, position.global_step],
            "costs": [[c.scan_id, c.steps, c.samples, c.seconds] for c in self.state.costs],
            "newest_task": self.state.newest_task,
            "learning_settings": learning_settings(self.config),
        }

    def load_state_dict(
        self, state: dict[str, Any], store_shards: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """Restore ``state_dict()``; collective in a data-parallel job (the store).

        In a data-parallel job ``state["store"]`` is this rank's shard, saved by a job with as
        many ranks. ``store_shards`` instead: the old shards this rank takes over from a job
        with a different number of ranks (``shards_for_rank``), redistributed by the store.
        Refuses (``ConfigError``) a checkpoint saved under other learning settings; one from
        before they were saved is taken as it is.
        """
        if "learning_settings" in state:
            check_same_learning_settings(state["learning_settings"], self.config)
        self.model.load_state_dict(state["model"])
        if state["support"] is not None:
            self.support = state["support"].to(self.device)
        # A checkpoint from before each scan kept its own: every scan had the one support.
        saved = state.get("supports")
        if saved is None and state["support"] is not None:
            saved = {i: state["support"] for i in range(state["position"][0] + 1)}
        self.supports = {int(i): support.to(self.device) for i, support in (saved or {}).items()}
        self.optimizer.load_state_dict(state["optimizer"])
        if self.store is not None and store_shards is not None:
            self.store.load_resharded(store_shards)
        elif self.store is not None:
            self.store.load_state_dict(state["store"])
        self.state = TrainerState(
            position=StreamPosition(*state["position"]),
            costs=[
                ScanCost(scan_id, steps, samples, seconds)
                for scan_id, steps, samples, seconds in state["costs"]
            ],
            # A checkpoint from before this field: the scan in progress had begun.
            newest_task=state.get("newest_task", state["position"][0]),
        )
