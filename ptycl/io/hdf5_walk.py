"""One walk over an untrusted HDF5 file's objects, with a bound on the work it may cause.

h5py's ``visititems`` names every object by its full path and opens it by that path again,
so a chain of nested groups costs time in the square of its depth (1,000 levels took about
a minute), and nothing stops a file of a million tiny objects. This walk opens each object
through its parent (one link followed per object, whatever the depth), visits each object
once however many hard links lead to it, and refuses the file once it has looked at more
objects, deeper nesting or more time than ``WalkBudget`` allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from ptycl.errors import ScanError

MAX_HDF5_OBJECTS = 10_000  # links (groups, datasets, external links) looked at in one file
MAX_HDF5_DEPTH = 64  # groups inside groups; a CXI scan nests 4 deep
MAX_CHECK_SECONDS = 30.0  # a backstop for whatever the counts above do not bound


class WalkBudget:
    """What checking one scan (with the files it links to) may cost before it is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.objects = 0
        self.deadline = time.monotonic() + MAX_CHECK_SECONDS

    def exceeded(self, depth: int) -> str | None:
        """Count one more object at ``depth``; why the walk must stop, or None."""
        self.objects += 1
        if self.objects > MAX_HDF5_OBJECTS:
            return f"holds more than {MAX_HDF5_OBJECTS} objects; ptycl looks at no more"
        if depth > MAX_HDF5_DEPTH:
            return f"groups nest more than {MAX_HDF5_DEPTH} deep; ptycl looks no deeper"
        if time.monotonic() > self.deadline:
            return f"checking its structure took more than {MAX_CHECK_SECONDS:g} s"
        return None


@dataclass
class Members:
    """What a walk found: the external links' file names and the datasets, opened."""

    external_files: list[str] = field(default_factory=list)
    datasets: list[h5py.Dataset] = field(default_factory=list)


def walk_hdf5(f: h5py.File, budget: WalkBudget) -> Members:
    """Every object reachable from the root by hard links, and every external link, once."""
    found = Members()
    root = h5py.h5g.open(f.id, b"/")
    seen = {h5py.h5o.get_info(root).addr}
    stack: list[tuple[h5py.h5g.GroupID, int]] = [(root, 0)]
    while stack:
        group, depth = stack.pop()
        links = _links(group, depth + 1, budget)
        for name, kind in links:
            if kind == h5py.h5l.TYPE_EXTERNAL:
                filename, _ = group.links.get_val(name)
                found.external_files.append(filename.decode("utf-8", "surrogateescape"))
            elif kind == h5py.h5l.TYPE_HARD:
                child = h5py.h5o.open(group, name)
                address = h5py.h5o.get_info(child).addr
                if address in seen:
                    continue  # a second hard link to an object already walked
                seen.add(address)
                kind_of_object = h5py.h5i.get_type(child)
                if kind_of_object == h5py.h5i.GROUP:
                    stack.append((child, depth + 1))
                elif kind_of_object == h5py.h5i.DATASET:
                    found.datasets.append(h5py.Dataset(child))
            # soft links name an object inside this file, reached by its hard link anyway
    return found


def _links(group: h5py.h5g.GroupID, depth: int, budget: WalkBudget) -> list[tuple[bytes, int]]:
    """(name, link type) of a group's links, each counted against the budget as it comes:
    HDF5 ends its iteration at the callback's first truthy return."""
    links: list[tuple[bytes, int]] = []
    stopped: list[str] = []

    def note(name: bytes, info: h5py.h5l.LinkInfo) -> bool | None:
        if (problem := budget.exceeded(depth)) is not None:
            stopped.append(problem)
            return True
        links.append((name, info.type))
        return None

    group.links.iterate(note, info=True)
    if stopped:
        raise ScanError(budget.path, f"{stopped[0]}; refused")
    return links
