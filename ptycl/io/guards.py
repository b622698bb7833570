"""Scan and label files are untrusted input: what the readers check before they believe them.

Design notes: docs/design.md.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import mmap
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from math import prod
from pathlib import Path

import h5py
import numpy as np
import zarr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore

from ptycl.errors import ScanError

MAX_FRAME_PIXELS = 1 << 26  # 8192 x 8192: larger than any ptychography detector
MAX_IMAGE_PIXELS = 1 << 26  # an object image (label, reconstruction)
MAX_CHUNK_BYTES = 1 << 28  # one chunk, as HDF5 or Zarr must hold it decompressed
MAX_READ_BYTES = 1 << 28  # frames read at once (a batch, a watcher's poll)
MAX_CHUNKS_PER_FRAME = 4096  # finer chunking costs more index lookups than pixels are worth
MAX_METADATA_BYTES = 1 << 24  # a zarr.json document, an HDF5 attribute, a "scalar" dataset
MAX_REFERENCE_DEPTH = 4  # file -> external link / VDS source -> ... (Eiger masters need 1)

# What h5py raises when HDF5 cannot read a damaged file: OSError for failed reads, KeyError
# and RuntimeError for objects and links it cannot open or check, ValueError and TypeError
# for damaged datatypes and dataspaces it cannot map to NumPy.
HDF5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)
# What zarr raises for a group it cannot parse: its errors (ValueError, KeyError and
# TypeError subclasses), JSON decoding (ValueError), and OSError from the file system.
ZARR_ERRORS = (OSError, KeyError, ValueError, TypeError)


@contextmanager
def storage_errors(
    path: str | Path, what: str, errors: tuple[type[Exception], ...] = HDF5_ERRORS
) -> Iterator[None]:
    """The storage library's exceptions inside the block become ScanErrors naming ``path``."""
    try:
        yield
    except errors as exc:
        detail = str(exc).strip() or exc.__class__.__name__
        raise ScanError(path, f"{what} ({detail})") from None


def is_inside(target: Path, directory: Path) -> bool:
    """Whether ``target``, symbolic links resolved, lies inside ``directory``."""
    return Path(os.path.realpath(target)).is_relative_to(os.path.realpath(directory))


def require_regular_file(path: Path) -> None:
    """Refuse anything but a regular file (after symbolic links) before opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ScanError(path, "no such file") from None
    if not stat.S_ISREG(mode):
        raise ScanError(path, "not a regular file; refusing to read it")


def check_frame_shape(path: Path, frame_shape: tuple[int, int]) -> None:
    height, width = frame_shape
    if height < 1 or width < 1:
        raise ScanError(path, f"frames are {height}x{width} pixels")
    if height * width > MAX_FRAME_PIXELS:
        raise ScanError(
            path,
            f"frames of {height}x{width} pixels are larger than the {MAX_FRAME_PIXELS} pixels "
            "ptycl reads",
        )


def check_whole_read(path: Path, what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A value read whole (an attribute): refuse a declared size beyond reason."""
    nbytes = prod(shape) * dtype.itemsize
    if nbytes > MAX_METADATA_BYTES:
        raise ScanError(path, f"{what} declares {shape} {dtype}, {nbytes} bytes; too large")


# -- HDF5 ------------------------------------------------------------------------------------

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SUPERBLOCK_SEARCH_OFFSETS = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)  # user block
SWMR_WRITE_FLAG = 0x04  # superblock v3 file consistency flags: open for SWMR writing
# HDF5 re-reads a SWMR file's metadata whose checksum fails (a writer may be half-way through
# it), sleeping 1 ns, 2 ns, 4 ns, ... between attempts; its default of 100 attempts turns a
# damaged file into a wait of 2^100 ns. 25 attempts wait at most about 30 ms in all.
SWMR_METADATA_READ_ATTEMPTS = 25
GLOBAL_HEAP_SIGNATURE = b"GCOL"


def _being_written_with_swmr(path: Path) -> bool:
    """Whether a SWMR writer holds the file (or died holding it), from the superblock's flags.

    Only such files are opened with ``swmr=True``: in SWMR-read mode HDF5 skips the end-of-file
    check and retries failed metadata reads, so a truncated finished file would be slower to
    fail, and HDF5 refuses to open such a file any other way.
    """
    with path.open("rb") as fh:
        for offset in SUPERBLOCK_SEARCH_OFFSETS:
            fh.seek(offset)
            head = fh.read(12)  # signature, version, offset size, length size, flags
            if len(head) < 12:
                return False
            if head[:8] == HDF5_SIGNATURE:
                return head[8] >= 3 and bool(head[11] & SWMR_WRITE_FLAG)
    return False


@functools.cache
def _read_attempts_setter() -> Callable[[int, int], int] | None:
    """HDF5's H5Pset_metadata_read_attempts, which h5py does not expose. h5py's extension
    modules are linked with the HDF5 library, so a look-up through one finds that library's
    copy; None where h5py is built otherwise (statically)."""
    try:
        setter = ctypes.CDLL(h5py.h5p.__file__).H5Pset_metadata_read_attempts
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return setter


def open_hdf5_file(path: Path) -> h5py.File:
    """Open read-only: in SWMR mode, with bounded metadata retries, when a SWMR writer holds
    the file (or died holding it); normally otherwise. Raises what h5py raises."""
    if not _being_written_with_swmr(path):
        return h5py.File(path, "r")
    setter = _read_attempts_setter()
    if setter is None:
        return h5py.File(path, "r", swmr=True)  # HDF5's own, unbounded, retries
    plist = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    if setter(plist.id, SWMR_METADATA_READ_ATTEMPTS) < 0:
        raise OSError("H5Pset_metadata_read_attempts failed")
    flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=plist))


def _hdf5_search(name: str, linking_dir: Path, env: str) -> Path | None:
    """The file HDF5 opens for an external link or a virtual dataset's source: an absolute
    name as it is; else (or when that is missing, by its last part) under the prefixes of
    ``env``, beside the linking file, in the current directory, whichever exists first."""
    wanted = Path(name)
    candidates = []
    if wanted.is_absolute():
        candidates.append(wanted)
        wanted = Path(wanted.name)
    prefixes = [p for p in os.environ.get(env, "").split(os.pathsep) if p]
    for prefix in prefixes:
        candidates.append(Path(prefix.replace("${ORIGIN}", str(linking_dir))) / wanted)
    candidates += [linking_dir / wanted, Path.cwd() / wanted]
    return next((c for c in candidates if c.exists()), None)


def _external_raw_file(name: str, linking_dir: Path) -> Path:
    """The file HDF5 reads external raw storage from: relative names are taken from
    HDF5_EXTFILE_PREFIX, or else from the *current* directory, not the file's."""
    wanted = Path(name)
    if wanted.is_absolute():
        return wanted
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX")
    return (Path(prefix.replace("${ORIGIN}", str(linking_dir))) if prefix else Path.cwd()) / wanted


class _ReferenceCheck:
    """Every external link, virtual dataset source and external raw file reachable from one
    HDF5 file, checked to stay inside ``scan_dir`` (files reached are checked in turn)."""

    def __init__(self, path: Path, scan_dir: Path) -> None:
        self.path = path  # the file the reader opened: errors name it
        self.scan_dir = scan_dir
        self.seen: set[str] = set()

    def target(self, kind: str, name: str, found: Path | None, depth: int) -> None:
        """An HDF5 file a link or a mapping leads to: present, inside, and clean itself."""
        if found is None:
            raise ScanError(self.path, f"{kind} {name!r}: no such file")
        if not is_inside(found, self.scan_dir):
            raise ScanError(
                self.path,
                f"{kind} {name!r} leads outside the scan's directory ({os.path.realpath(found)}); "
                "refusing to read it",
            )
        self.regular(kind, name, found)
        real = os.path.realpath(found)
        if real in self.seen:
            return
        if depth >= MAX_REFERENCE_DEPTH:
            raise ScanError(self.path, f"{kind} {name!r}: files link on more than {depth} deep")
        with storage_errors(self.path, f"{kind} {name!r} unreadable"):
            with open_hdf5_file(found) as linked:
                self.file(linked, depth + 1)

    def regular(self, kind: str, name: str, found: Path) -> None:
        if not stat.S_ISREG(os.stat(found).st_mode):
            raise ScanError(self.path, f"{kind} {name!r} is not a regular file; refusing it")

    def file(self, f: h5py.File, depth: int = 0) -> None:
        self.seen.add(os.path.realpath(f.filename))
        here = Path(f.filename).parent
        external: list[h5py.ExternalLink] = []
        datasets: list[h5py.Dataset] = []

        # Both visits walk hard links only: nothing outside this file is opened by them.
        def note_link(_: str, link: object) -> None:
            if isinstance(link, h5py.ExternalLink):
                external.append(link)

        def note_object(_: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets.append(obj)

        f.visititems_links(note_link)
        f.visititems(note_object)
        for link in external:
            found = _hdf5_search(link.filename, here, "HDF5_EXT_PREFIX")
            self.target("external link", link.filename, found, depth)
        for dataset in datasets:
            self.dataset(dataset, here, depth)
        extents = _raw_data_extents(datasets)
        _check_raw_data_present(self.path, f, extents)
        _check_global_heaps(self.path, f, extents)

    def dataset(self, dataset: h5py.Dataset, here: Path, depth: int) -> None:
        plist = dataset.id.get_create_plist()
        for i in range(plist.get_external_count()):
            name, offset, size = plist.get_external(i)
            self.raw_file(os.fsdecode(name), offset, size, here)
        if plist.get_layout() != h5py.h5d.VIRTUAL:
            return
        mapped, growing = 0, False
        for i in range(plist.get_virtual_count()):
            name = os.fsdecode(plist.get_virtual_filename(i))
            source_name = os.fsdecode(plist.get_virtual_dsetname(i))
            if "%" in name or "%" in source_name:
                # printf-style names stand for any number of files, found only when read
                raise ScanError(self.path, f"virtual dataset source pattern {name!r}: refused")
            space = plist.get_virtual_vspace(i)
            # An unlimited mapping grows the dataset with its source: nothing unmapped to count.
            unlimited = _is_unlimited(space)
            points = None if unlimited else space.get_select_npoints()
            growing |= unlimited
            mapped += points or 0
            if name == ".":
                continue  # a mapping within this same file
            found = _hdf5_search(name, here, "HDF5_VDS_PREFIX")
            self.target("virtual dataset source", name, found, depth)
            self.source_holds(found, source_name, points)
        if not growing and mapped < dataset.size:
            raise ScanError(
                self.path,
                f"virtual dataset {dataset.name} maps {mapped} of the {dataset.size} values it "
                "declares",
            )

    def source_holds(self, found: Path | None, source_name: str, points: int | None) -> None:
        """A source dataset missing or smaller than its mapping reads as fill values."""
        assert found is not None
        with storage_errors(self.path, f"virtual dataset source {found} unreadable"):
            with open_hdf5_file(found) as source:
                held = source[source_name].size if source_name in source else None
        if held is None or held < (points or 0):
            raise ScanError(
                self.path,
                f"virtual dataset source {found.name}:{source_name} holds "
                f"{'nothing' if held is None else held} of the {points} values mapped from it",
            )

    def raw_file(self, name: str, offset: int, size: int, here: Path) -> None:
        found = _external_raw_file(name, here)
        if not is_inside(found, self.scan_dir):
            why = (
                ""
                if Path(name).is_absolute()
                else (
                    " (HDF5 reads relative names from the current directory unless "
                    "HDF5_EXTFILE_PREFIX says otherwise)"
                )
            )
            raise ScanError(
                self.path,
                f"external storage {name!r} is read from {os.path.realpath(found)}, outside the "
                f"scan's directory{why}; refusing to read it",
            )
        if not found.exists():
            raise ScanError(self.path, f"external storage {name!r}: no such file")
        self.regular("external storage", name, found)
        held = found.stat().st_size - offset
        if size != h5py.h5f.UNLIMITED and held < size:
            raise ScanError(
                self.path, f"external storage {name!r} declares {size} bytes, holds {max(held, 0)}"
            )


def _raw_data_extents(datasets: list[h5py.Dataset]) -> list[tuple[int, int]]:
    """[start, stop) byte ranges of the file holding the datasets' raw data."""
    extents: list[tuple[int, int]] = []
    for dataset in datasets:
        plist = dataset.id.get_create_plist()
        layout = plist.get_layout()
        if layout == h5py.h5d.CHUNKED:
            dataset.id.chunk_iter(
                lambda info: extents.append((info.byte_offset, info.byte_offset + info.size))
            )
        elif layout == h5py.h5d.CONTIGUOUS and plist.get_external_count() == 0:
            offset = dataset.id.get_offset()
            if offset is not None:
                extents.append((offset, offset + dataset.id.get_storage_size()))
    return extents


def _gaps(extents: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    position = 0
    for start, stop in sorted(extents):
        if start > position:
            yield position, min(start, size)
        position = max(position, stop)
    if position < size:
        yield position, size


def _check_raw_data_present(path: Path, f: h5py.File, extents: list[tuple[int, int]]) -> None:
    """Refuse raw data stored past the end of the file. HDF5 checks a file's length when it
    opens it, except in SWMR mode (the file grows as it is read), where it reads what lies
    past the end as zeros: a cut file of a dead writer would give frames of zeros."""
    size = os.stat(f.filename).st_size
    beyond = max((stop for _, stop in extents), default=0)
    if beyond > size:
        raise ScanError(path, f"truncated: data up to byte {beyond}, {size} bytes present")


def _check_global_heaps(path: Path, f: h5py.File, extents: list[tuple[int, int]]) -> None:
    """Walk every global heap collection as HDF5 will, before it reads one.

    Variable-length strings (most attributes) live in global heap collections, the one kind
    of HDF5 metadata without a checksum, and HDF5 walks a collection's objects with no guard
    against an empty one: a single flipped size makes it loop for ever, holding the GIL.
    Collections are found by their signature anywhere but in the datasets' raw data.
    """
    lengths = f.id.get_create_plist().get_sizes()[1]
    with (
        open(f.filename, "rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as image,
    ):
        for start, stop in _gaps(extents, len(image)):
            at = image.find(GLOBAL_HEAP_SIGNATURE, start, stop)
            while at != -1:  # collections do not nest: go on after this one
                after = _walk_global_heap(path, image, at, lengths)
                at = image.find(GLOBAL_HEAP_SIGNATURE, after, stop)


def _walk_global_heap(path: Path, image: mmap.mmap, at: int, lengths: int) -> int:
    """HDF5's walk over one collection (signature, version 1, 3 reserved, size; then objects:
    index (2), references (2), reserved (4), size, data padded to 8 bytes; index 0 is the
    free space, last). Refuse an empty object, where HDF5's walk would stop advancing, and
    a second free-space object, past which the walk might reach one. Returns where to look
    for the next collection."""
    header = 8 + lengths
    if image[at + 4 : at + 5] != b"\x01":
        return at + 1  # not a collection: HDF5 refuses the version before walking
    size = int.from_bytes(image[at + 8 : at + header], "little")
    end = at + size
    if size < header or end > len(image):
        return at + 1  # HDF5 fails to read it, and does not walk it
    p, free_seen = at + header, False
    while p + header <= end:
        index = int.from_bytes(image[p : p + 2], "little")
        object_size = int.from_bytes(image[p + 8 : p + header], "little")
        if index == 0 and (object_size == 0 or free_seen):
            raise ScanError(
                path,
                f"corrupt global heap collection at byte {at} (a bad object at byte {p}): "
                "HDF5 would loop for ever reading it",
            )
        free_seen |= index == 0
        p += object_size if index == 0 else header + -(-object_size // 8) * 8
    return end


def _is_unlimited(space: h5py.h5s.SpaceID) -> bool:
    """Whether a selection extends without bound (always a regular hyperslab in HDF5)."""
    if space.get_select_type() != h5py.h5s.SEL_HYPERSLABS or not space.is_regular_hyperslab():
        return False
    return h5py.h5s.UNLIMITED in space.get_regular_hyperslab()[2]


def check_hdf5_references(f: h5py.File, path: Path) -> None:
    """Refuse a file whose external links, virtual datasets or external raw storage would
    make HDF5 read outside the scan's directory (the directory of ``path``)."""
    with storage_errors(path, "unreadable HDF5 structure"):
        _ReferenceCheck(path, path.parent).file(f)


def check_hdf5_stored(dataset: h5py.Dataset, path: Path, what: str) -> None:
    """Refuse to read a whole dataset its file does not store: unallocated storage reads
    back as fill values, whatever size the dataset declares."""
    hdf5_stored_rows(dataset, path, what).require(dataset.shape[0] if dataset.shape else 0)


def hdf5_stored_rows(dataset: h5py.Dataset, path: Path, what: str) -> StoredRows:
    """The rows of a dataset its file stores, found as reads go (frames, translations)."""
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.CHUNKED:
        chunks = dataset.chunks
        assert chunks is not None  # a chunked layout has them

        # The origins of the chunks the file stores, listed by one walk of the chunk index
        # (H5Dchunk_iter) and walked again only when a read goes past them (a growing scan).
        # Why not a look-up per chunk: get_chunk_info_by_coord walks the whole index for each
        # chunk, and read_direct_chunk reads the chunk, which h5py's cache rarely still holds
        # when the read follows, so every frame was read twice.
        stored: set[tuple[int, ...]] = set()

        def probe(origin: tuple[int, ...]) -> str | None:
            if origin not in stored:
                try:
                    dataset.id.chunk_iter(lambda chunk: stored.add(tuple(chunk.chunk_offset)))
                except HDF5_ERRORS as exc:
                    return str(exc)
            return None if origin in stored else "chunk storage is not allocated"

        return _chunked_rows(path, what, dataset.shape, chunks, dataset.dtype.itemsize, probe)
    if layout == h5py.h5d.CONTIGUOUS and plist.get_external_count() == 0:
        offset, size = dataset.id.get_offset(), dataset.id.get_storage_size()
        if dataset.nbytes and (offset is None or size < dataset.nbytes):
            raise ScanError(path, f"{what} declares {dataset.shape} but the file stores none of it")
        file_size = os.stat(dataset.file.filename).st_size
        if offset is not None and offset + dataset.nbytes > file_size:
            raise ScanError(
                path,
                f"{what} declares {dataset.nbytes} bytes at offset {offset}, past the end of "
                f"the file ({file_size} bytes)",
            )
    # Stored in full: COMPACT data sits in the object header, external raw files were checked
    # with the references, VIRTUAL datasets' mappings too.
    return StoredRows(path, what)


def _chunked_rows(
    path: Path,
    what: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    itemsize: int,
    probe: Callable[[tuple[int, ...]], str | None],
) -> StoredRows:
    """StoredRows over a chunk grid, once the grid is known to be one a reader can afford."""
    if len(chunks) != len(shape) or min(chunks) < 1:
        raise ScanError(path, f"{what} has chunks of {chunks} for a shape {shape}")
    if prod(chunks) * itemsize > MAX_CHUNK_BYTES:
        raise ScanError(path, f"{what} has chunks of {chunks}, more than {MAX_CHUNK_BYTES} bytes")
    per_row = prod(-(-n // c) for n, c in zip(shape[1:], chunks[1:], strict=True))
    if per_row > MAX_CHUNKS_PER_FRAME:
        raise ScanError(path, f"{what} is cut into {per_row} chunks per frame; too fine to read")
    others = itertools.product(
        *(range(0, n, c) for n, c in zip(shape[1:], chunks[1:], strict=True))
    )
    return StoredRows(path, what, chunks[0], list(others), probe)


class StoredRows:
    """How many leading rows (along axis 0) of an array its file is known to store, found
    chunk by chunk as reads go further (each chunk is looked up once). A chunk found absent
    is refused: HDF5 and zarr read it as fill values, for as many rows as the array declares,
    so a scan declaring 10^12 frames would otherwise never end."""

    def __init__(
        self,
        path: Path,
        what: str,
        chunk_rows: int = 1,
        others: list[tuple[int, ...]] | None = None,
        probe: Callable[[tuple[int, ...]], str | None] | None = None,
    ) -> None:
        """Without ``probe``, every row is stored (storage that is not chunked)."""
        self.path, self.what = path, what
        self._chunk_rows = chunk_rows
        self._others = others or [()]  # origins of a row's chunks along the other axes
        self._probe = probe  # a chunk's origin -> None if stored, else why not
        self.known = 0 if probe is not None else sys.maxsize

    def require(self, stop: int) -> None:
        """Refuse to go on unless rows [0, stop) are all stored."""
        while self.known < stop:
            for rest in self._others:
                assert self._probe is not None  # known is maxsize without one
                problem = self._probe((self.known, *rest))
                if problem is not None:
                    last = self.known + self._chunk_rows - 1
                    raise ScanError(
                        self.path,
                        f"{self.what}: rows {self.known}..{last} are not stored ({problem})",
                    )
            self.known += self._chunk_rows


# -- Zarr ------------------------------------------------------------------------------------


class ContainedStore(LocalStore):
    """A read-only Zarr store that reads only regular files inside its root, of bounded size.

    zarr's LocalStore reads a whole key file at once, through symbolic links: a chunk linked
    to ``/dev/zero`` would never end, one linked to a FIFO never start.
    """

    def __init__(self, root: Path | str, *, read_only: bool = True) -> None:
        super().__init__(root, read_only=True)

    def _leads_outside(self, key: str) -> bool:
        """Whether the key's file lies outside the root: only possible through a symbolic
        link (or ".."), so each part is looked at, and a link resolved only where there is one."""
        path = self.root
        for part in key.split("/"):
            path = path / part
            try:
                if part == ".." or stat.S_ISLNK(os.lstat(path).st_mode):
                    return not is_inside(self.root / key, self.root)
            except (FileNotFoundError, NotADirectoryError):
                return False  # nothing there to read
        return False

    def _check(self, key: str) -> None:
        path = self.root / key
        if self._leads_outside(key):
            raise ScanError(
                self.root,
                f"{key} leads outside the scan ({os.path.realpath(path)}); refusing to read it",
            )
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return  # an absent key: zarr's to handle (a missing document, a fill-value chunk)
        if not stat.S_ISREG(info.st_mode):
            raise ScanError(self.root, f"{key} is not a regular file; refusing to read it")
        limit = MAX_METADATA_BYTES if key.endswith("zarr.json") else MAX_CHUNK_BYTES
        if info.st_size > limit:
            raise ScanError(self.root, f"{key} holds {info.st_size} bytes, more than {limit}")

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        self._check(key)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._check(key)
        return await super().get_partial_values(prototype, key_ranges)

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        self._check(key)
        return super().get_sync(key, prototype=prototype, byte_range=byte_range)


def zarr_stored_rows(array: Callable[[], zarr.Array], path: Path, what: str) -> StoredRows:
    """The rows of an array (``array()``: its current version; a growing scan's metadata is
    read again at every poll) that its store holds chunk files for. ptycl's writers store
    every chunk, even one equal to the fill value."""
    current = array()
    shape = tuple(current.shape)
    chunks = tuple(current.metadata.chunk_grid.chunk_shape)

    def probe(origin: tuple[int, ...]) -> str | None:
        latest = array()
        coords = tuple(o // c for o, c in zip(origin, chunks, strict=True))
        key = f"{latest.path}/{latest.metadata.encode_chunk_key(coords)}"
        return None if (Path(latest.store.root) / key).exists() else f"no chunk {key}"

    return _chunked_rows(path, what, shape, chunks, np.dtype(current.dtype).itemsize, probe)


def check_zarr_stored(array: zarr.Array, path: Path, what: str) -> None:
    """Refuse to read a whole array whose chunks are not all in its store."""
    if array.shape:  # a 0-d array is one chunk; a wrong fill value is the caller's to check
        zarr_stored_rows(lambda: array, path, what).require(array.shape[0])


def check_frames(frames: np.ndarray, path: str | Path, indices: np.ndarray | None = None) -> None:
    """Raise ScanError naming the first frame holding NaN, Inf or negative counts.

    Unsigned integer frames cannot hold any of these and are not scanned.
    """
    if frames.dtype.kind == "u" or frames.size == 0:
        return
    flat = frames.reshape(len(frames), -1)
    for problem, bad in (
        ("NaN or infinite", ~np.isfinite(flat).all(axis=1) if frames.dtype.kind == "f" else None),
        ("negative", (flat < 0).any(axis=1)),
    ):
        if bad is not None and bad.any():
            first = int(np.argmax(bad))
            frame = int(indices[first]) if indices is not None else first
            raise ScanError(
                path,
                f"frame {frame} has {problem} counts ({int(bad.sum())} bad frame(s) in this read)",
            )
