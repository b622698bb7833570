"""Errors ptycl raises on purpose: each renders as one line naming what and where."""

from __future__ import annotations

from pathlib import Path


class PtyclError(Exception):
    """Base of every error ptycl raises deliberately (the CLI prints these as one line)."""


class ConfigError(PtyclError):
    """A run configuration or a command-line override is invalid.

    ``key`` is the dotted path of the offending setting, e.g. ``train.batch_size``.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


class ScanError(PtyclError):
    """A scan file cannot be used: truncated, corrupt, missing a dataset, bad frames, ...

    The stream goes on without it; the message names the file and the problem.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        # One line whatever the problem quotes (a library's message, a name from the file).
        self.path, self.problem = str(path), " ".join(problem.split())
        super().__init__(f"{self.path}: {self.problem}")


class NothingToDoError(PtyclError):
    """A command found none of the work it was given (no scans, or none it could use): it
    exits non-zero with this line instead of reporting success on nothing."""


class CheckpointError(PtyclError):
    """A checkpoint is missing, torn or incompatible with the run."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


class OutputError(PtyclError):
    """An output of a run cannot be written: a full disk, a quota, permissions.

    The file keeps its previous complete content (or stays absent): outputs are written to a
    temporary file and renamed into place (``ptycl.outputs``).
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), " ".join(problem.split())
        super().__init__(f"{self.path}: {self.problem}")
