"""Watch a beamline directory: follow scans while they are written, train on them, reconstruct.

Design notes: docs/design.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycl.config import Config
from ptycl.errors import ConfigError, OutputError, ScanError
from ptycl.eval.evaluate import ErrorMatrices, EvaluationScan
from ptycl.io.object_image import label_path_for
from ptycl.io.records import ObjectImage, ScanMetadata, distinct_scan_id
from ptycl.lifecycle.run import RunLifecycle
from ptycl.lifecycle.stop import StopRequested
from ptycl.parallel import Distributed
from ptycl.prep.patches import label_pixel_m
from ptycl.prep.reader import UnusableScan
from ptycl.recon.infer import ScanPrediction, predict
from ptycl.recon.output import write_reconstruction
from ptycl.stream.discovery import (
    Candidate,
    ScanDiscovery,
    Sighting,
    scan_stem_of_label,
    signature,
)
from ptycl.stream.evaluation_set import EvaluationReservoir
from ptycl.stream.follower import ScanBuffer, ScanFollower, read_label_file
from ptycl.stream.ledger import Ledger
from ptycl.stream.quarantine import QUARANTINE_LIST, quarantine
from ptycl.stream.report_cadence import ReportCadence
from ptycl.stream.segments import segment_steps
from ptycl.stream.status import StatusLine, StatusSnapshot, WatchCounters
from ptycl.train.report import RunReport, write_report
from ptycl.train.strategies import STRATEGIES, strategy_named
from ptycl.train.trainer import ContinualTrainer, StreamPosition

log = logging.getLogger("ptycl.stream")

RETRY_OPEN_S = 0.5  # a scan that cannot be opened yet is tried again after this long
LEDGER_JSON = "ledger.json"
STATUS_JSON = "status.json"


# -- what rank 0 decides, and every rank applies ---------------------------------------------


@dataclass(frozen=True)
class Opened:
    name: str
    metadata: ScanMetadata


@dataclass(frozen=True)
class Frames:
    name: str
    inputs: np.ndarray  # (n, S, S) float32 prepared
    positions_m: np.ndarray  # (n, 2)
    complete: bool  # the writer marked the scan complete and these are its last frames
    skipped: int = 0  # frames of the scan so far that no detector records, left out


@dataclass(frozen=True)
class Labelled:
    name: str
    truth: ObjectImage
    source: str  # "in_scan" or the label file's name


@dataclass(frozen=True)
class Reconstructed:
    name: str
    path: str | None


@dataclass(frozen=True)
class Quarantined:
    name: str
    reason: str


Action = Opened | Frames | Labelled | Reconstructed | Quarantined


@dataclass
class Tick:
    """One loop's decisions: state changes, at most one segment to train, a checkpoint."""

    actions: list[Action] = field(default_factory=list)
    train: tuple[str, int] | None = None
    # a scan whose every segment was trained before its writer marked it complete
    finish: str | None = None
    checkpoint: bool = False

    @property
    def idle(self) -> bool:
        return not self.actions and self.train is None and self.finish is None


class Watcher:
    def __init__(self, directory: Path, config: Config, dist: Distributed) -> None:
        if config.train.store.policy == "balanced":
            raise ConfigError(
                "<config>",
                "train.store.policy",
                "'balanced' keeps a slot for every scan, and a watched stream has no last "
                "scan: use 'reservoir' or 'loss_aware'",
            )
        if strategy_named(config.train.strategy).keeps_every_scan:
            bounded = [name for name, s in STRATEGIES.items() if not s.keeps_every_scan]
            raise ConfigError(
                "<config>",
                "train.strategy",
                f"{config.train.strategy!r} retrains on every scan seen, a cost without bound; "
                f"watch mode trains with one of {', '.join(bounded)}",
            )
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError("ptycl watch", "DIR", f"{directory} is not a directory")
        self.directory = directory.resolve()
        self.config = config
        self.settings = config.watch
        self.dist = dist
        self.main = dist.is_main
        self.lifecycle = RunLifecycle(config, dist, "ptycl watch")
        self.output_dir = self.lifecycle.output_dir
        self.checkpoint_dir = self.lifecycle.checkpoint_dir
        self.trainer = ContinualTrainer.build(config, dist)
        self.matrices = ErrorMatrices()
        self.ledger = Ledger(segment_frames=self.settings.segment_frames)
        # which earlier trained scans each new row evaluates (every rank keeps it, in step)
        self.evaluation_set = EvaluationReservoir(self.settings.evaluation_scans, config.run.seed)
        self.buffers: dict[str, ScanBuffer] = {}  # every rank: scans being followed / trained
        self.lifecycle.states = {
            "trainer": self.trainer.state_dict,
            "matrices": lambda: self.matrices.state_dict(),
            "evaluation_set": lambda: self.evaluation_set.state_dict(),
            "ledger": lambda: self.ledger.to_state(),
        }
        # rank 0 only: the directory, the files, the clocks, evaluation and outputs
        self.discovery: ScanDiscovery | None = None
        self.candidates: dict[str, Candidate] = {}
        self.followers: dict[str, ScanFollower] = {}
        self.label_candidates: dict[str, Candidate] = {}  # scan name -> its label file
        self.report_cadence = ReportCadence()
        # Labels quarantined but left in place (a read-only DIR): scan name -> the label's
        # signature then. Looked at again only once the file changes, not every few seconds.
        self.refused_labels: dict[str, tuple[int, int] | None] = {}
        self.awaiting_label: dict[str, Path] = {}  # reconstructed scans a label may still train
        self.complete_since: dict[str, float] = {}
        # the evaluation set's scans by error-matrix column; None: gone since a restart
        self.eval_scans: dict[int, EvaluationScan | None] = {}
        self.tick = Tick()  # the decisions of the loop under way, for the other ranks
        self.counters = WatchCounters()
        self.status: StatusLine | None = None
        self.started = time.perf_counter()

    # -- the loop -----------------------------------------------------------------------

    def run(self, resume: bool = False) -> None:
        # From here on SIGINT/SIGTERM stop the loop cleanly (checked at each step and loop).
        with self.lifecycle.stop:
            self._run(resume)

    def _run(self, resume: bool) -> None:
        try:
            if resume:
                self._resume()
            elif self.main and (self.checkpoint_dir / "latest.pt").exists():
                log.warning(
                    "%s holds a checkpoint: starting afresh over it (--resume continues it)",
                    self.checkpoint_dir,
                )
            self.lifecycle.began()
            if self.main:
                self.status = StatusLine(
                    self.settings.status_every_s, self.output_dir / STATUS_JSON
                )
                self.discovery = ScanDiscovery(
                    self.directory, self.settings.polling, self.settings.poll_interval_s
                )
                log.info(
                    "watching %s (%s) -> %s", self.directory, self.discovery.mode, self.output_dir
                )
                self._start_discovery()
            while not self._meet_and_check_stop():
                tick = self._decide() if self.main else None
                tick = self.dist.broadcast(tick)
                if not self.main:
                    for action in tick.actions:
                        self._apply(action)
                if tick.train is not None:
                    tick.checkpoint |= self._train_segment(*tick.train)
                if tick.finish is not None:
                    self._scan_trained(tick.finish)
                    tick.checkpoint = True
                if tick.checkpoint:
                    self._checkpoint()
                if self.main:
                    self._show_status(force=False)
                    if tick.idle:
                        time.sleep(self.settings.poll_interval_s)
        except BaseException:
            self._close()  # no checkpoint: the state may be half-way through a change
            raise
        else:
            self._shutdown()

    def _meet_and_check_stop(self) -> bool:
        """Collective, at the top of every loop: under MPI the other ranks wait for rank 0
        (which may be sleeping or reading files) in a barrier they poll with sleeps, so an
        idle watcher does not spin a core per rank in MPI's busy wait."""
        comm = self.dist.comm
        if comm is not None:
            request = comm.Ibarrier()
            while not request.Test():
                time.sleep(0.005)
        return self._should_stop()

    def _should_stop(self) -> bool:
        """Collective: every rank stops at the same point when any rank was signalled."""
        return self.lifecycle.should_stop()

    def _close(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        for follower in self.followers.values():
            follower.close()
        if self.status is not None:
            self.status.close()

    def _shutdown(self) -> None:
        """Stopped cleanly: checkpoint (collective), report, last status line."""
        self._close()
        self._checkpoint()
        self.trainer.close()  # collective: the distributed store's exchanges and threads
        if self.main:
            self._write_report(final=True)
            self._show_status(force=True)
            counts = self.ledger.counts()
            log.info(
                "watch stopped (%s): %s; checkpoint in %s, continue with --resume",
                self.lifecycle.stop.signalled or "done",
                ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no scans",
                self.checkpoint_dir,
            )

    # -- rank 0: the directory and the files ------------------------------------------------

    def _start_discovery(self) -> None:
        assert self.discovery is not None
        now = time.monotonic()
        sightings = self.discovery.start()
        present = {s.path.name for s in sightings if s.kind == "scan"}
        # Scans a previous run had not finished with: pick them up again.
        for name, record in self.ledger.scans.items():
            if record.terminal:
                continue
            if name not in present:
                self._quarantine(name, "the file disappeared while the watcher was stopped")
            elif record.state == "reconstructed":
                self.awaiting_label[name] = self.directory / name
        for sighting in sightings:
            self._sighted(sighting, now)
        for name, candidate in self.candidates.items():
            record = self.ledger.record(name)
            if record is not None and record.state in ("seen", "training"):
                candidate.settled = True  # it was accepted before the restart

    def _sighted(self, sighting: Sighting, now: float) -> None:
        name = sighting.path.name
        if sighting.kind == "label":
            scan = self._scan_wanting_label(scan_stem_of_label(name))
            if scan is not None and not sighting.gone:
                self._want_label(scan, now, settled=sighting.settled)
            return
        record = self.ledger.record(name)
        if sighting.gone:
            self.candidates.pop(name, None)
            return
        if record is not None and (record.terminal or record.state == "reconstructed"):
            return
        if name in self.followers or name in self.buffers:
            return
        candidate = self.candidates.get(name)
        if candidate is None:
            self.candidates[name] = candidate = Candidate(sighting.path, now)
        candidate.note(sighting, now)

    def _scan_wanting_label(self, stem: str) -> str | None:
        """The scan a label file named after ``stem`` is for, if that scan still needs one
        (a label never replaces the one a scan is already training with)."""
        wanting = [name for name, b in self.buffers.items() if not b.labelled]
        for name in [*wanting, *self.awaiting_label]:
            if Path(name).stem == stem:
                return name
        return None

    def _do(self, action: Action) -> None:
        """Apply a decision here at once (rank 0) and record it for the other ranks."""
        self._apply(action)
        self.tick.actions.append(action)
        if isinstance(action, Reconstructed | Quarantined):
            self.tick.checkpoint = True

    def _decide(self) -> Tick:
        """Rank 0: look at the directory and the files; return this loop's decisions."""
        assert self.discovery is not None
        now = time.monotonic()
        try:
            for sighting in self.discovery.poll():
                self._sighted(sighting, now)
            self._open_candidates(now)
            self._read_followers(now)
            self._check_labels(now)
            self._reconstruct_unlabelled(now)
        except StopRequested:  # what was decided before goes to the ranks; then the loop stops
            tick, self.tick = self.tick, Tick()
            return tick
        tick, self.tick = self.tick, Tick()
        tick.train = self._next_segment()
        if tick.train is None:
            tick.finish = self._fully_trained()
        return tick

    def _open_candidates(self, now: float) -> None:
        for name, candidate in list(self.candidates.items()):
            if candidate.next_try > now:
                continue
            candidate.update(now)
            if not candidate.exists:
                del self.candidates[name]
                continue
            try:
                with self.lifecycle.stop.abandonable():
                    follower = ScanFollower(
                        candidate.path,
                        self.config.prep,
                        self.ledger.frame_shape,
                        max_frames_per_poll=max(512, 2 * self.settings.segment_frames),
                        positions=self.config.io.position_convention,
                    )
            except UnusableScan as exc:
                self._quarantine(name, exc.problem)
                continue
            except ScanError as exc:
                # Not (yet) a readable scan: a writer may still be at it. Refuse it only once
                # it has stopped changing.
                if candidate.unchanged_for(now) >= self.settings.unreadable_after_s:
                    self._quarantine(name, exc.problem)
                else:
                    candidate.next_try = now + RETRY_OPEN_S
                continue
            settled = candidate.settled or candidate.unchanged_for(now) >= self.settings.settle_s
            if follower.looks_finished and not settled:
                # It says it is finished, but a name that only "appeared" may be a copy in
                # progress: read it once it has settled.
                follower.close()
                candidate.next_try = now + min(RETRY_OPEN_S, self.settings.settle_s)
                continue
            del self.candidates[name]
            self.followers[name] = follower
            self._do(Opened(name, follower.metadata))
            log.info(
                "%s: following (%s frames%s)",
                name,
                "x".join(map(str, follower.frame_shape)),
                ", finished" if follower.looks_finished else ", being written",
            )
            if follower.label_in_file:
                truth, source = follower.label()
                self._do(Labelled(name, truth, source))

    def _read_followers(self, now: float) -> None:
        stall = self.settings.stall_timeout_s
        for name, follower in list(self.followers.items()):
            started = time.perf_counter()
            try:
                with self.lifecycle.stop.abandonable():
                    new = follower.poll()
            except ScanError as exc:
                self._quarantine(name, exc.problem)
                continue
            self.counters.read_seconds += time.perf_counter() - started
            if follower.frames_read > self.settings.max_frames_per_scan:
                self._quarantine(
                    name,
                    f"more than watch.max_frames_per_scan={self.settings.max_frames_per_scan} "
                    "frames (raise it to accept longer scans)",
                )
                continue
            if new is not None or follower.complete:
                inputs, positions = new if new is not None else self._no_frames()
                self.counters.frames_read += len(inputs)
                skipped = follower.screen.total_skipped
                self._do(Frames(name, inputs, positions, follower.complete, skipped))
            if follower.complete:
                del self.followers[name]
                self.complete_since[name] = now
                log.info("%s: complete, %d frames", name, follower.frames_read)
                if follower.screen.total_skipped:
                    log.warning("%s: %s", name, follower.screen.summary())
            elif stall is not None and now - follower.last_arrival > stall:
                self._quarantine(
                    name,
                    f"stalled: no new frame for {stall:g} s after {follower.frames_read} frames "
                    "and the writer never marked the scan complete",
                )

    def _no_frames(self) -> tuple[np.ndarray, np.ndarray]:
        size = self.config.prep.input_size
        return np.empty((0, size, size), np.float32), np.empty((0, 2))

    def _want_label(self, name: str, now: float, settled: bool = False) -> None:
        path = label_path_for(self.directory / name)
        candidate = self.label_candidates.get(name)
        if candidate is None:
            self.label_candidates[name] = candidate = Candidate(path, now)
        candidate.settled |= settled
        candidate.update(now)

    def _check_labels(self, now: float) -> None:
        """Labels beside scans that have none yet: read once settled (renamed into place,
        or unchanged for ``settle_s``); a label unreadable for long is quarantined alone."""
        for name, buffer in self.buffers.items():
            if not buffer.labelled and name not in self.label_candidates:
                label = label_path_for(buffer.path)
                if name in self.refused_labels and self.refused_labels[name] == signature(label):
                    continue  # quarantined in place, unchanged since
                if label.exists():
                    self.refused_labels.pop(name, None)
                    self._want_label(name, now)
        for name, candidate in list(self.label_candidates.items()):
            candidate.update(now)
            buffer = self.buffers.get(name)
            if not candidate.exists or (buffer is not None and buffer.labelled):
                del self.label_candidates[name]
                continue
            if not (candidate.settled or candidate.unchanged_for(now) >= self.settings.settle_s):
                continue
            if candidate.next_try > now:
                continue
            try:
                with self.lifecycle.stop.abandonable():
                    found = read_label_file(self.directory / name)
            except ScanError as exc:
                if candidate.unchanged_for(now) >= self.settings.unreadable_after_s:
                    del self.label_candidates[name]
                    moved = quarantine(
                        candidate.path, exc.problem, self.output_dir / QUARANTINE_LIST
                    )
                    if moved is None:  # left in place: not again until it changes
                        self.refused_labels[name] = signature(candidate.path)
                else:
                    candidate.next_try = now + RETRY_OPEN_S
                continue
            if found is None:
                continue
            del self.label_candidates[name]
            if name in self.awaiting_label:
                # Reconstructed before its label came: read the scan again and train on it.
                path = self.awaiting_label.pop(name)
                self.candidates[name] = candidate = Candidate(path, now)
                candidate.settled = True
                self._open_candidates(now)
                if name not in self.buffers:
                    continue  # could not reopen (quarantined, or retried later)
            truth, source = found
            self._do(Labelled(name, truth, source))
            log.info("%s: label arrived (%s)", name, source)

    def _reconstruct_unlabelled(self, now: float) -> None:
        for name, buffer in list(self.buffers.items()):
            if buffer.labelled or not buffer.complete or name in self.label_candidates:
                continue
            if now - self.complete_since.get(name, now) < self.settings.label_wait_s:
                continue
            if self.ledger.scans[name].state == "training":
                # trained on in part before a restart, and its label file is gone since
                self._quarantine(name, "its label disappeared while the watcher was stopped")
                continue
            path = self._reconstruct(name, buffer)
            self.awaiting_label[name] = buffer.path
            self._do(Reconstructed(name, None if path is None else str(path)))

    def _reconstruct(self, name: str, buffer: ScanBuffer) -> Path | None:
        """Infer every frame with the current model, stitch, write the image and a PNG."""
        from ptycl.eval.plots import plot_reconstruction  # matplotlib, only when needed

        trainer = self.trainer
        started = time.perf_counter()
        if trainer.support is None:
            log.warning("%s: reconstructing with a model that has not trained yet", name)
        support = None if trainer.support is None else trainer.support.cpu().numpy()
        prep = self.config.prep
        predicted = predict(
            trainer.model, torch.from_numpy(buffer.inputs.view()).unsqueeze(1), trainer.device
        ).numpy()
        prediction = ScanPrediction(
            buffer.metadata,
            predicted[:, 0],
            predicted[:, 1],
            buffer.positions_m.view().copy(),
            label_pixel_m(buffer.metadata.geometry, prep.input_size, prep.resize),
            None,
            support,
        )
        out_dir = self.settings.recon_dir or buffer.path.parent
        stem = Path(name).stem
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            stitched = prediction.stitch()
            written = write_reconstruction(
                out_dir / f"{stem}.recon.h5", prediction, stitched, source=str(self.output_dir)
            )
            plot_reconstruction(
                stitched.image, None, stitched.covered, out_dir / f"{stem}.recon.png", title=stem
            )
        except (OSError, ValueError, OutputError) as exc:
            log.error("%s: reconstruction not written (%s)", name, exc)
            return None
        self.counters.frames_reconstructed += len(buffer)
        self.counters.recon_seconds += time.perf_counter() - started
        log.info("%s: no label; reconstructed %d frames -> %s", name, len(buffer), written)
        return written

    def _next_segment(self) -> tuple[str, int] | None:
        """The segment to train now: the interrupted one first (the trainer's position is in
        it), else the next ready segment of the scan that started training first."""
        if self.ledger.in_progress is not None:
            name, index = self.ledger.in_progress
            buffer = self.buffers.get(name)
            if buffer is not None and buffer.labelled and buffer.ready_segment(index) is not None:
                return name, index
            return None
        training = [
            (self.ledger.scans[name].task, name)
            for name, buffer in self.buffers.items()
            if buffer.labelled
        ]
        for _, name in sorted(training):
            index = self.ledger.scans[name].segments_trained
            if self.buffers[name].ready_segment(index) is not None:
                return name, index
        return None

    def _fully_trained(self) -> str | None:
        """A labelled scan whose last segment was trained before the writer marked the scan
        complete (its length a multiple of the segment size): it is done now."""
        for name, buffer in self.buffers.items():
            record = self.ledger.scans[name]
            if (
                buffer.labelled
                and buffer.complete
                and record.frames_trained == len(buffer)
                and self.ledger.in_progress is None
            ):
                return name
        return None

    def _quarantine(self, name: str, reason: str) -> None:
        """Rank 0: set the file aside and record the decision for every rank."""
        self._set_aside(name, reason)
        self._do(Quarantined(name, reason))

    def _set_aside(self, name: str, reason: str) -> None:
        follower = self.followers.pop(name, None)
        if follower is not None:
            follower.close()
        self.candidates.pop(name, None)
        self.label_candidates.pop(name, None)
        self.awaiting_label.pop(name, None)
        self.complete_since.pop(name, None)
        quarantine(self.directory / name, reason, self.output_dir / QUARANTINE_LIST)

    # -- every rank: state changes --------------------------------------------------------

    def _apply(self, action: Action) -> None:
        ledger = self.ledger
        if isinstance(action, Opened):
            if ledger.record(action.name) is None:
                scan_id = distinct_scan_id(action.metadata.scan_id, action.name, ledger.scan_ids())
                ledger.add(action.name, scan_id)
            if ledger.frame_shape is None:
                ledger.frame_shape = tuple(action.metadata.geometry.frame_shape)
            self.buffers[action.name] = ScanBuffer(
                self.directory / action.name,
                replace(action.metadata, scan_id=ledger.scans[action.name].scan_id),
                self.config.prep,
                self.settings.segment_frames,
                self.config.run.seed,
            )
        elif isinstance(action, Frames):
            buffer = self.buffers[action.name]
            buffer.append(action.inputs, action.positions_m)
            record = ledger.scans[action.name]
            record.frames_read = len(buffer)
            record.frames_skipped = action.skipped
            if action.complete:
                buffer.complete = True
                record.frames_total = len(buffer)
        elif isinstance(action, Labelled):
            record = ledger.scans[action.name]
            if record.state != "training":
                ledger.move(action.name, "training")
            record.label = action.source
            self.buffers[action.name].set_label(action.truth, record.task)
        elif isinstance(action, Reconstructed):
            ledger.move(action.name, "reconstructed").reconstruction = action.path
            self.buffers.pop(action.name, None)
        elif isinstance(action, Quarantined):
            ledger.quarantine(action.name, action.reason)
            self.buffers.pop(action.name, None)

    def _train_segment(self, name: str, index: int) -> bool:
        """Collective: train one segment; True when the ledger changed for good (a scan
        finished or was quarantined) and a checkpoint is due."""
        buffer, record = self.buffers[name], self.ledger.scans[name]
        trainer = self.trainer
        try:
            segment = buffer.segment(index)
        except ScanError as exc:
            if self.main:
                self._set_aside(name, exc.problem)
            self._apply(Quarantined(name, exc.problem))
            return True
        start, stop = buffer.ready_segment(index)
        steps = segment_steps(
            start, stop, self.config.train.steps_per_scan, self.settings.nominal_frames_per_scan
        )
        if len(segment.train_rows) == 0:
            steps = 0  # every frame of a tiny segment held out: nothing to train on
        started = time.perf_counter()
        if steps:
            trainer.arrived(segment)
            if self.ledger.in_progress != (name, index):
                position = trainer.state.position
                trainer.state.position = StreamPosition(record.task, 0, position.global_step)
                self.ledger.in_progress = (name, index)
            finished = trainer.train_scan(
                segment,
                record.task,
                steps=steps,  # the segment's share of the scan's budget
                should_stop=self._should_stop,
                on_step=self._on_step,
            )
            if not finished:
                return False  # stopping: the shutdown checkpoints mid-segment
            _merge_costs(trainer)
        self.ledger.in_progress = None
        record.segments_trained += 1
        record.frames_trained = stop
        record.steps += steps
        self.counters.frames_trained += stop - start
        self.counters.steps += steps
        self.counters.train_seconds += time.perf_counter() - started
        if buffer.complete and stop == len(buffer):
            self._scan_trained(name)
            return True
        return False

    def _on_step(self, position: StreamPosition) -> None:
        every = self.config.train.checkpoint_every_steps
        if every and position.global_step % every == 0:
            self._checkpoint()
        if self.main:
            self._show_status(force=False)  # a long segment does not freeze the status line

    def _scan_trained(self, name: str) -> None:
        """Every rank: the scan is trained and offered to the evaluation set (the same draws on
        every rank, so their checkpoint states agree). Rank 0: its error-matrix row, kept for
        later rows if the set admits it (dropped otherwise), the report."""
        buffer = self.buffers.pop(name)
        record = self.ledger.move(name, "trained")
        column = len(self.ledger.evaluated) - 1
        newest = None
        if self.main:
            self.complete_since.pop(name, None)
            newest = EvaluationScan.of(buffer.evaluation())
            del buffer  # the last reference: its frames (with spare room) go before evaluating
            started = time.perf_counter()
            columns, row = self._add_error_row(column, newest)
            record.eval_seconds = time.perf_counter() - started
            self.counters.eval_seconds += record.eval_seconds
        admitted, evicted = self.evaluation_set.offer(column)
        if not self.main:
            return
        if evicted is not None:
            self.eval_scans.pop(evicted, None)
        if admitted:
            self.eval_scans[column] = newest
        log.info(
            "%s: trained, %d frames in %d segments, %d steps; phase MAE after it: %.3f on it, "
            "%.3f mean over %d scans (%.1f s)%s",
            name,
            record.frames_trained,
            record.segments_trained,
            record.steps,
            row[-1],
            float(np.nanmean(row)),
            len(columns),
            record.eval_seconds,
            "" if admitted else "; not kept for later evaluation",
        )
        self._write_report()

    def _add_error_row(self, column: int, newest: EvaluationScan) -> tuple[list[int], list[float]]:
        """Row ``column`` of every error matrix: the evaluation set's scans that could be read
        again since a restart, and the scan just trained. Returns (columns, phase MAE)."""
        trainer = self.trainer
        held = [j for j in self.evaluation_set.members if self.eval_scans.get(j) is not None]
        scans = [self.eval_scans[j] for j in held] + [newest]
        columns = [*held, column]
        row = self.matrices.add_row(trainer.model, scans, trainer.device, columns=columns)
        self.matrices.scan_ids = [
            self.ledger.scans[name].scan_id or name for name in self.ledger.evaluated
        ]
        return columns, row["phase_mae"]

    # -- checkpoints, reports, status -------------------------------------------------------

    def _checkpoint(self) -> None:
        """Collective: the trainer, the error matrices and the ledger, in one atomic file."""
        self.lifecycle.checkpoint()
        if self.main:
            self.ledger.write_json(self.output_dir / LEDGER_JSON)

    def _resume(self) -> None:
        state, shards = self.lifecycle.load()
        ledger = Ledger.from_state(state["ledger"])
        if ledger.segment_frames != self.settings.segment_frames:
            raise ConfigError(
                "--resume",
                "watch.segment_frames",
                f"the run was cut into segments of {ledger.segment_frames} frames, not "
                f"{self.settings.segment_frames}: resume with the same setting",
            )
        evaluation_scans = self.settings.evaluation_scans
        evaluation_set = EvaluationReservoir.from_state(state["evaluation_set"])
        if evaluation_set.capacity != evaluation_scans:
            raise ConfigError(
                "--resume",
                "watch.evaluation_scans",
                f"the run evaluates {evaluation_set.capacity} earlier scans after each one, "
                f"not {evaluation_scans}: resume with the same setting",
            )
        self.trainer.load_state_dict(state["trainer"], shards)
        self.matrices = ErrorMatrices.from_state(state["matrices"])
        self.ledger = ledger
        self.evaluation_set = evaluation_set
        position = self.trainer.state.position
        counts = ledger.counts()
        log.info(
            "resumed: %s; %d steps so far%s",
            ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no scans",
            position.global_step,
            f", segment {ledger.in_progress[1]} of {ledger.in_progress[0]} at step "
            f"{position.step_in_scan}"
            if ledger.in_progress
            else "",
        )
        if self.main:
            # The evaluation set's scans again, for the rows of the scans still to come.
            for column in evaluation_set.members:
                self.eval_scans[column] = self._reload_for_evaluation(ledger.evaluated[column])

    def _reload_for_evaluation(self, name: str) -> EvaluationScan | None:
        record = self.ledger.scans[name]
        path = self.directory / name
        try:
            follower = ScanFollower(
                path,
                self.config.prep,
                self.ledger.frame_shape,
                positions=self.config.io.position_convention,
            )
            buffer = ScanBuffer(
                path,
                follower.metadata,
                self.config.prep,
                self.settings.segment_frames,
                self.config.run.seed,
            )
            while not follower.complete:
                new = follower.poll()
                if new is None and not follower.complete:
                    raise ScanError(path, "no longer complete")
                if new is not None:
                    buffer.append(*new)
            buffer.complete = True
            found = follower.label()
            if found is None:
                raise ScanError(path, "its label is gone")
            buffer.set_label(found[0], record.task)
            return EvaluationScan.of(buffer.evaluation())
        except ScanError as exc:
            log.error("%s: trained before, cannot evaluate it again: %s", name, exc)
            return None

    def _write_report(self, final: bool = False) -> None:
        report = RunReport.build(
            self.config,
            self.trainer,
            self.matrices,
            [f"{r.name}: {r.reason}" for r in self.ledger.scans.values() if r.reason],
            wall_seconds=time.perf_counter() - self.started,
        )
        started = time.monotonic()
        dense = final or self.report_cadence.due(started)
        write_report(report, self.output_dir, tables_and_plots=dense)
        if dense:
            self.report_cadence.drew(started, time.monotonic())

    def _show_status(self, force: bool) -> None:
        if self.status is None or not (force or self.status.due()):
            return
        store = self.trainer.store
        _, latest = self.matrices.latest("phase_mae")
        backlog = sum(
            len(buffer) - self.ledger.scans[name].frames_trained
            for name, buffer in self.buffers.items()
            if buffer.labelled
        )
        self.status.emit(
            StatusSnapshot(
                mode=self.discovery.mode if self.discovery else "",
                scans=self.ledger.counts(),
                following=len(self.followers),
                backlog_frames=backlog,
                store_held=None if store is None else len(store),
                store_capacity=None if store is None else store.capacity,
                latest_scan=self.matrices.scan_ids[-1] if latest else None,
                latest_phase_mae=latest[-1] if latest else None,
                mean_phase_mae=float(np.nanmean(latest)) if latest else None,
                counters=self.counters,
            )
        )


def _merge_costs(trainer: ContinualTrainer) -> None:
    """One cost entry per scan (the report's cost per scan): fold the entries train_scan
    started for each segment into the scan's first one."""
    merged: dict[str, Any] = {}
    for cost in trainer.state.costs:
        first = merged.setdefault(cost.scan_id, cost)
        if first is not cost:
            first.steps += cost.steps
            first.samples += cost.samples
            first.seconds += cost.seconds
    trainer.state.costs = list(merged.values())


def run_watch(directory: Path, config: Config, dist: Distributed, resume: bool = False) -> None:
    """Watch ``directory`` until SIGINT/SIGTERM (collective: every rank of a job calls it)."""
    Watcher(directory, config, dist).run(resume=resume)
