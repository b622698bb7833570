"""Continual-learning strategies: what each keeps and how its replay loss is made.

A strategy is a small frozen object in ``STRATEGIES`` (``train.strategy`` names one; the
config check and ``ptycl train --help`` read this table). The trainer's step is the same for
all (new batch -> task loss, plus one term per replay draw, one backward); a strategy says

- ``draws``: replay draws from the rehearsal store per step (0: the run builds no store);
- ``keeps_every_scan``: the trainer keeps every scan seen and trains on all of them, a cost
  growing without bound (``ptycl watch`` refuses such a strategy);
- ``fresh_model_per_scan``: a new model (new weights, input statistics and optimiser state)
  when each scan begins training;
- ``steps_for_scan(steps_per_scan, scan_index, scans_in_stream)``: the optimiser steps scan
  ``scan_index`` gets (``scans_in_stream``: the stream's length where it is known, ``ptycl
  train``; None in ``ptycl watch``);
- ``replay_term(index, output, draw, terms)``: the loss of draw ``index`` (0-based) of the
  step, from the model's ``output`` on the drawn inputs; ``terms`` holds the losses and weights
  (``ReplayTerms``), as Mammoth's ``observe()`` writes a whole method in a few lines.

Adding a strategy: a subclass of ``Strategy`` here and one line in ``STRATEGIES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptycl.errors import ConfigError
from ptycl.model.ptychonn import ModelOutput
from ptycl.rehearsal.samples import ReplaySamples
from ptycl.train.losses import der_distance, task_loss


@dataclass(frozen=True)
class ReplayTerms:
    """The settings and pixels a replay term is made with."""

    kind: str  # "mae" or "mse"
    alpha: float  # DER's output-matching weight
    beta: float  # DER++'s replayed-label weight
    support: torch.Tensor | None  # the pixels scored

    def task(self, output: ModelOutput, draw: ReplaySamples) -> torch.Tensor:
        """The task loss against the stored labels."""
        return task_loss(output, draw.labels, self.kind, self.support)

    def outputs(self, output: ModelOutput, draw: ReplaySamples) -> torch.Tensor:
        """The distance to the outputs stored when the samples were offered (DER)."""
        return der_distance(output, draw.outputs, self.kind, self.support)


@dataclass(frozen=True)
class Strategy:
    """Plain fine-tuning on each new scan: no store, a fixed step budget per scan."""

    name: str
    draws: int = 0
    keeps_every_scan: bool = False
    fresh_model_per_scan: bool = False

    def steps_for_scan(
        self, steps_per_scan: int, scan_index: int, scans_in_stream: int | None = None
    ) -> int:
        return steps_per_scan

    def replay_term(
        self, index: int, output: ModelOutput, draw: ReplaySamples, terms: ReplayTerms
    ) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} draws nothing to replay")


@dataclass(frozen=True)
class Cumulative(Strategy):
    """Retrain on every scan seen, with a budget growing with them (the upper reference)."""

    keeps_every_scan: bool = True

    def steps_for_scan(
        self, steps_per_scan: int, scan_index: int, scans_in_stream: int | None = None
    ) -> int:
        return steps_per_scan * (scan_index + 1)


@dataclass(frozen=True)
class ExperienceReplay(Strategy):
    """ER: one draw a step, scored against its stored labels."""

    draws: int = 1

    def replay_term(self, index, output, draw, terms):
        return terms.task(output, draw)


@dataclass(frozen=True)
class DarkExperienceReplay(Strategy):
    """DER: one draw a step, matched to the outputs stored at insertion."""

    draws: int = 1

    def replay_term(self, index, output, draw, terms):
        return terms.alpha * terms.outputs(output, draw)


@dataclass(frozen=True)
class DarkExperienceReplayPlusPlus(Strategy):
    """DER++: DER's draw, and a second one scored against its stored labels."""

    draws: int = 2

    def replay_term(self, index, output, draw, terms):
        if index == 0:
            return terms.alpha * terms.outputs(output, draw)
        return terms.beta * terms.task(output, draw)


@dataclass(frozen=True)
class FullReplay(Strategy):
    """DER++'s steps and samples (two draws a step), both draws scored against their stored
    labels, from a store that keeps every frame seen: replay of all the data at rehearsal's
    cost per step (its memory grows; ``ptycl bench continual`` sizes the store to the
    stream)."""

    draws: int = 2

    def replay_term(self, index, output, draw, terms):
        return terms.task(output, draw)


@dataclass(frozen=True)
class Joint(Strategy):
    """The offline upper bound: nothing trained until the last scan, then a new model trained
    on every scan with cumulative's last-scan budget. Needs the stream's length."""

    keeps_every_scan: bool = True
    fresh_model_per_scan: bool = True

    def steps_for_scan(
        self, steps_per_scan: int, scan_index: int, scans_in_stream: int | None = None
    ) -> int:
        if scans_in_stream is None:
            raise ConfigError(
                "<config>", "train.strategy", "'joint' needs the stream's length (ptycl train)"
            )
        return steps_per_scan * scans_in_stream if scan_index == scans_in_stream - 1 else 0


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("incremental"),
        Cumulative("cumulative"),
        ExperienceReplay("er"),
        DarkExperienceReplay("der"),
        DarkExperienceReplayPlusPlus("derpp"),
        FullReplay("full_replay"),
        # How well each scan can be learned alone at the budget: its diagonal is the number.
        Strategy("fresh", fresh_model_per_scan=True),
        Joint("joint"),
    )
}


def strategy_named(name: str) -> Strategy:
    """The strategy ``train.strategy`` names; one line naming the choices otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            "<config>",
            "train.strategy",
            f"{name!r} is not a strategy: choose one of {', '.join(STRATEGIES)}",
        ) from None
