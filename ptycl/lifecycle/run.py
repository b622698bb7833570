"""One run's life around its work, the same for ``ptycl train`` and ``ptycl watch``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ptycl.config import Config, dump_config
from ptycl.lifecycle.checkpoint import RunCheckpoints
from ptycl.lifecycle.stop import StopSignals
from ptycl.outputs import write_text
from ptycl.parallel import Distributed

# A part of the run's state: a function returning it, called at every checkpoint (as
# torchtitan's CheckpointManager asks each of its states={...} for its state_dict()).
StateOf = Callable[[], Any]


class RunLifecycle:
    """The run's directory, its checkpoints, its stop signals and what a checkpoint holds.

    Collective in a data-parallel job where the checkpoints are: every rank builds it, saves,
    loads and asks ``should_stop`` at the same points.
    """

    def __init__(self, config: Config, dist: Distributed, command: str) -> None:
        self.config = config
        self.dist = dist
        self.output_dir = config.run.output_dir
        if dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.checkpoints = RunCheckpoints(
            self.checkpoint_dir, dist, command, keep=config.train.keep_checkpoints
        )
        self.stop = StopSignals()
        # name -> the function returning that part's state, e.g. {"trainer": trainer.state_dict}
        self.states: dict[str, StateOf] = {}

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """The newest intact checkpoint (``RunCheckpoints.load``), for the owner to restore."""
        return self.checkpoints.load()

    def began(self) -> None:
        """The run is accepted (a refused resume leaves the run's own ``config.yaml``)."""
        if self.dist.is_main:
            write_text(self.output_dir / "config.yaml", dump_config(self.config))

    def checkpoint(self) -> None:
        self.checkpoints.save({name: state() for name, state in self.states.items()})

    def should_stop(self, also: bool = False) -> bool:
        """Collective: a signal may reach the ranks at different steps, and all stop at the
        first step any of them saw it (or ``also`` held on any rank)."""
        return self.dist.any(self.stop.signalled is not None or also)
