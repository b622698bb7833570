"""Errors ptycl raises on purpose: each renders as one line naming what and where."""

from __future__ import annotations

from pathlib import Path

MAX_PROBLEM_CHARS = 400  # a message quotes a library or a file, never all of a hostile value


def printable(text: str | Path) -> str:
    """``text`` with control characters escaped (a newline in a file name as ``\\n``): a name
    can neither split a line-oriented output nor forge a row of it."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """``text`` on one line (whitespace runs squeezed, other control characters escaped),
    cut to ``limit`` characters."""
    line = printable(" ".join(str(text).split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


class PtyclError(Exception):
    """Base of every error ptycl raises deliberately (the CLI prints these as one line)."""


class ConfigError(PtyclError):
    """A run configuration or a command-line override is invalid.

    ``key`` is the dotted path of the offending setting, e.g. ``train.batch_size``.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, one_line(problem)
        super().__init__(f"{printable(source)}: {one_line(key, 80)}: {self.problem}")


class ScanError(PtyclError):
    """A scan file cannot be used: truncated, corrupt, missing a dataset, bad frames, ...

    The stream goes on without it; the message names the file and the problem.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        # One line whatever the problem quotes (a library's message, a name from the file).
        self.path, self.problem = str(path), one_line(problem)
        super().__init__(f"{printable(self.path)}: {self.problem}")


class NothingToDoError(PtyclError):
    """A command found none of the work it was given (no scans, or none it could use): it
    exits non-zero with this line instead of reporting success on nothing."""


class CheckpointError(PtyclError):
    """A checkpoint is missing, torn or incompatible with the run."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{printable(self.path)}: {problem}")


class OutputError(PtyclError):
    """An output of a run cannot be written: a full disk, a quota, permissions.

    The file keeps its previous complete content (or stays absent): outputs are written to a
    temporary file and renamed into place (``ptycl.outputs``).
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), one_line(problem)
        super().__init__(f"{printable(self.path)}: {self.problem}")


class TrainingDiverged(PtyclError):
    """A training step would have made the model's weights non-finite."""
