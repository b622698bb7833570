"""Checkpoints: the last K kept, each checked by SHA-256 before it is loaded.

Design notes: docs/design.md.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import torch

from ptycl.errors import CheckpointError
from ptycl.parallel import Distributed

log = logging.getLogger("ptycl.lifecycle.checkpoint")

LATEST = "latest.pt"
LOCK = ".lock"
DEFAULT_KEEP = 3
MANIFEST_FORMAT = 1
_NUMBERED = re.compile(r"checkpoint-(\d+)\.(pt|json)")
# Everything a checkpoint directory holds that pruning may remove (temporaries: ``.NAME.PID.tmp``).
_PRUNABLE = re.compile(r"checkpoint-\d+\.(pt|json)|store-step\d+-rank\d+of\d+\.pt|\..+\.tmp")


class _Digest(NamedTuple):
    sha256: str
    size: int


def _checkpoint_name(number: int) -> str:
    return f"checkpoint-{number:06d}.pt"


def _manifest_name(number: int) -> str:
    return f"checkpoint-{number:06d}.json"


def store_shard_path(directory: Path, step: int, rank: int, ranks: int) -> Path:
    return directory / f"store-step{step}-rank{rank}of{ranks}.pt"


def _fsync_directory(directory: Path) -> None:
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # make the rename itself durable
    finally:
        os.close(directory_fd)


def _write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> _Digest:
    """``write`` into a temporary file, fsync, rename it to ``target``; the bytes' digest."""
    temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)  # the sum of what reached the file, read back
            digest = _Digest(
                hashlib.file_digest(handle, "sha256").hexdigest(),
                os.fstat(handle.fileno()).st_size,
            )
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    # A full disk or a quota: torch.save reports a failed write as RuntimeError. The previous
    # checkpoint stays committed; no temporary is left to look like a new one.
    except (OSError, RuntimeError) as exc:
        temporary.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointError(target, f"cannot write ({reason.splitlines()[0]})") from None
    return digest


def _numbers(directory: Path, suffix: str) -> list[int]:
    """Checkpoint numbers with a file of this suffix ("pt" or "json"), newest first."""
    if not directory.is_dir():
        return []
    matches = (_NUMBERED.fullmatch(path.name) for path in directory.iterdir())
    return sorted((int(m[1]) for m in matches if m and m[2] == suffix), reverse=True)


def _read_manifest(directory: Path, number: int) -> dict[str, _Digest]:
    path = directory / _manifest_name(number)
    try:
        manifest = json.loads(path.read_bytes())
        if manifest["format"] != MANIFEST_FORMAT:
            raise CheckpointError(
                path, f"manifest format {manifest['format']!r}, not {MANIFEST_FORMAT}"
            )
        return {
            str(name): _Digest(str(entry["sha256"]), int(entry["size"]))
            for name, entry in manifest["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(path, f"unreadable manifest ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{exc.__class__.__name__}: {(detail.splitlines() or [''])[0]}"


def _file_problem(path: Path, expected: _Digest) -> str | None:
    """Why ``path`` is not the file the manifest recorded, or None when it is."""
    try:
        size = path.stat().st_size
        if size != expected.size:
            if size < expected.size:
                return f"{path.name} is truncated ({size} of {expected.size} bytes)"
            return f"{path.name} has {size} bytes, not the {expected.size} written"
        with open(path, "rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as exc:
        return f"{path.name} is unreadable ({_reason(exc)})"
    if sha256 != expected.sha256:
        return f"{path.name} fails its SHA-256 check (corrupted)"
    return None


def _files_problem(directory: Path, files: dict[str, _Digest], dist: Distributed) -> str | None:
    """Collective: the first problem any rank finds, each rank checking its share of the files
    (on a cluster, reading them in parallel instead of rank 0 reading every shard)."""
    names = sorted(files)[dist.rank :: dist.world_size]
    mine = next(
        (p for p in (_file_problem(directory / n, files[n]) for n in names) if p is not None), None
    )
    return next((p for p in dist.allgather(mine) if p is not None), None)


def _choose(directory: Path, dist: Distributed) -> tuple[Path, dict[str, _Digest]]:
    """Collective: the newest checkpoint that verifies whole, the same one on every rank."""
    numbers = dist.broadcast(_numbers(directory, "json") if dist.is_main else None)
    skipped = 0
    for number in numbers:
        path = directory / _checkpoint_name(number)
        files: dict[str, _Digest] | None = None
        problem: str | None = None
        if dist.is_main:
            try:
                files = _read_manifest(directory, number)
                if path.name not in files:
                    problem = f"its manifest does not name {path.name}"
            except CheckpointError as exc:
                problem = str(exc)
        files, problem = dist.broadcast((files, problem))
        if problem is None:
            problem = _files_problem(directory, files, dist)
        if problem is None:
            if skipped and dist.is_main:
                log.warning("resuming from the earlier checkpoint %s", path)
            return path, files
        skipped += 1
        if dist.is_main:
            log.warning("skipping checkpoint %s: %s", path, problem)
    if skipped:
        raise CheckpointError(directory, f"none of its {skipped} checkpoint(s) is intact")
    if (directory / LATEST).exists():
        raise CheckpointError(
            directory / LATEST,
            "no checkpoint manifest beside it (written by a ptycl before checksummed "
            "checkpoints): resume with that version, or start afresh",
        )
    raise CheckpointError(directory, "no checkpoint to resume from")


def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files it cannot read
        raise CheckpointError(path, f"unreadable checkpoint ({_reason(exc)})") from None


def _point_latest_at(directory: Path, name: str) -> None:
    """The manifest is committed already: a failure here (an inode quota) leaves the old link
    or none, and resuming still finds the checkpoint by its manifest."""
    temporary = directory / f".{LATEST}.{os.getpid()}.tmp"
    try:
        temporary.unlink(missing_ok=True)
        os.symlink(name, temporary)  # relative: the directory can be moved or copied
        os.replace(temporary, directory / LATEST)
        _fsync_directory(directory)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(directory / LATEST, f"cannot link ({_reason(exc)})") from None


def _prune(directory: Path, keep: int, oldest: int) -> None:
    """Remove all but the newest ``keep`` checkpoints numbered ``oldest`` or above, the shards
    no kept manifest names, and leftover temporaries (no writer is running: see the callers)."""
    wanted = {LATEST}
    for number in [n for n in _numbers(directory, "json") if n >= oldest][:keep]:
        wanted |= {_manifest_name(number), _checkpoint_name(number)}
        with suppress(CheckpointError):  # an unreadable manifest names no shard worth keeping
            wanted |= set(_read_manifest(directory, number))
    doomed = [
        p for p in directory.iterdir() if _PRUNABLE.fullmatch(p.name) and p.name not in wanted
    ]
    # Manifests first: a prune cut short leaves no manifest naming a removed file.
    for path in sorted(doomed, key=lambda p: p.suffix != ".json"):
        path.unlink(missing_ok=True)


def _commit(
    directory: Path,
    state: dict[str, Any],
    shards: dict[str, _Digest],
    keep: int,
    oldest: int | None,
) -> int:
    """Rank 0: the next checkpoint's file, its manifest, ``latest.pt``, then pruning (keeping
    numbers from ``oldest`` on, or only this one when None). Returns the new number."""
    existing = _numbers(directory, "pt") + _numbers(directory, "json")
    number = max(existing, default=0) + 1  # above any torn or orphaned file: never reused
    name = _checkpoint_name(number)
    files = {**shards, name: _write_atomically(directory / name, lambda h: torch.save(state, h))}
    manifest = {
        "format": MANIFEST_FORMAT,
        "files": {n: d._asdict() for n, d in sorted(files.items())},
    }
    text = json.dumps(manifest, indent=1).encode()
    _write_atomically(directory / _manifest_name(number), lambda h: h.write(text))
    _point_latest_at(directory, name)
    _prune(directory, keep, number if oldest is None else oldest)
    return number


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = DEFAULT_KEEP) -> Path:
    """One process: ``state`` as the next checkpoint in ``directory``, keeping the last ``keep``."""
    number = _commit(directory, state, {}, keep, oldest=0)
    return directory / _checkpoint_name(number)


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint manifest (intact or not: ``load`` tells)."""
    return bool(_numbers(directory, "json"))


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """One process: the newest intact checkpoint's state (in a data-parallel run, without the
    store shards)."""
    path, _ = _choose(directory, Distributed.single(torch.device("cpu")))
    return _load(path)


def _lock_directory(directory: Path, command: str) -> tuple[BinaryIO | None, str | None]:
    """Rank 0: an exclusive lock on ``directory/.lock`` while the returned file stays open
    (the OS drops it when the process ends, SIGKILL included). Returns the open file, or None
    and why not when another process holds it; None and None where the filesystem has no
    locks."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # said by every rank, as the caller raises it after a broadcast
        return None, f"cannot open {LOCK} ({_reason(exc)})"
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):  # e.g. Lustre mounted without flock
            os.close(fd)
            log.warning(
                "cannot lock %s (%s): nothing stops a second run on this run.output_dir",
                directory / LOCK,
                _reason(exc),
            )
            return None, None
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return None, (
            f"in use by {holder}: a second run here would remove its checkpoints; stop it, "
            "or give this run another run.output_dir"
        )
    with suppress(OSError):  # who holds it is for the message only: a full disk may refuse it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
    return os.fdopen(fd, "r+b"), None  # closed, and so unlocked, when the run lets go of it


class RunCheckpoints:
    """The checkpoints of one run (``ptycl train`` or ``ptycl watch``) in ``directory``.

    ``save`` and ``load`` are collective in a data-parallel job: every rank calls them at the
    same point. A run that did not ``load`` starts afresh: its first ``save`` removes the
    checkpoints already there.
    """

    def __init__(
        self, directory: Path, dist: Distributed, command: str, keep: int = DEFAULT_KEEP
    ) -> None:
        self.directory = directory
        self.dist = dist
        # "ptycl train" or "ptycl watch": their states differ, and a batch script that resumes
        # whenever latest.pt exists may point one at the other's run.output_dir.
        self.command = command
        self.keep = keep
        # Rank 0: the lowest checkpoint number of this run's history (None: none saved yet).
        self._oldest: int | None = None
        # Rank 0 holds the directory's lock (an open file) as long as this object lives; every
        # rank stops if another run holds it.
        self._lock: BinaryIO | None = None
        problem = None
        if dist.is_main:
            self._lock, problem = _lock_directory(directory, command)
        problem = dist.broadcast(problem)
        if problem is not None:
            raise CheckpointError(directory, problem)

    def save(self, state: dict[str, Any]) -> None:
        """Save a run's ``state`` (its "trainer" entry a ``ContinualTrainer.state_dict()``):
        each rank's store shard to its own file, the rest (the same on every rank) by rank 0."""
        dist = self.dist
        shard = state["trainer"]["store"] if dist.is_distributed else None
        written: dict[str, _Digest] = {}
        if shard is not None:
            step = state["trainer"]["position"][2]
            path = store_shard_path(self.directory, step, dist.rank, dist.world_size)
            written[path.name] = _write_atomically(path, lambda h: torch.save(shard, h))
        # Also the barrier: every shard is on disk before a manifest names it.
        shards = {name: d for files in dist.allgather(written) for name, d in files.items()}
        if dist.is_main:
            main = {**state, "command": self.command, "ranks": dist.world_size}
            if dist.is_distributed:
                trainer = {**state["trainer"], "store": None}
                main = {**main, "trainer": trainer, "sharded_store": shard is not None}
            number = _commit(self.directory, main, shards, self.keep, self._oldest)
            self._oldest = number if self._oldest is None else self._oldest
        dist.barrier()  # rank 0 pruned (temporaries too) before any rank writes again

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """The newest intact checkpoint's state, for this rank of this job.

        With as many ranks as the saving job, state["trainer"]["store"] is this rank's shard and
        the second value is None. With a different number (both above one), the second value is
        the list of old shards this rank takes over (``shards_for_rank``), for the store to
        redistribute. A single-process store and a sharded one do not convert into each other:
        that refuses with the rank counts to use.
        """
        dist = self.dist
        path, files = _choose(self.directory, dist)
        self._oldest = 0  # continuing: the earlier checkpoints are this run's history
        state = _load(path)
        saved_by = state.get("command", self.command)  # older checkpoints do not say
        if saved_by != self.command:
            raise CheckpointError(
                path,
                f"saved by `{saved_by}`, and this is `{self.command}`: resume it with "
                f"`{saved_by}`, or give this run another run.output_dir",
            )
        saved_ranks = int(state.get("ranks", 1))
        sharded = bool(state.get("sharded_store", False))
        has_store = sharded or state["trainer"]["store"] is not None
        if not has_store or saved_ranks == dist.world_size == 1:
            return state, None
        if (saved_ranks == 1) != (dist.world_size == 1):
            same = "1 rank (no mpiexec)" if saved_ranks == 1 else f"mpiexec -n {saved_ranks}"
            raise CheckpointError(
                path,
                f"the rehearsal store was saved by {saved_ranks} rank(s) and this job has "
                f"{dist.world_size}: a single-process store and an MPI-sharded one do not convert "
                f"into each other; resume with {same}",
            )
        step = state["trainer"]["position"][2]

        def shard(rank: int) -> dict[str, Any]:
            shard_path = store_shard_path(self.directory, step, rank, saved_ranks)
            if shard_path.name not in files:
                raise CheckpointError(path, f"its manifest does not name {shard_path.name}")
            return _load(shard_path)  # verified with the rest by _choose

        if saved_ranks == dist.world_size:
            state["trainer"]["store"] = shard(dist.rank)
            return state, None
        from ptycl.rehearsal.distributed_store import shards_for_rank  # imports MPI

        return state, [
            shard(old) for old in shards_for_rank(saved_ranks, dist.rank, dist.world_size)
        ]
