"""Hostile and broken scan files: every reader reads them correctly or refuses them in one line.

The property, for every file made here: opened as ``ptycl train`` and the watcher open scans
(``open_scan``), with every batch and the label read, it either reads (well-formed batches:
consecutive indices, finite non-negative counts, finite positions) or raises a PtyclError whose
message is one line naming the scan or its label file. Never another exception, a crash, a
hang or unbounded memory, and never a byte read from outside the scan's directory.

Each file is read in a fresh process forked from a server that has imported only the readers,
so that a crash or a hang inside HDF5 or zarr is observed rather than suffered. Per file:
at most ``TIME_LIMIT_S`` (a sound read of these scans takes milliseconds), at most
``RSS_LIMIT_MB`` of growth of the peak resident memory, and an address-space cap
(``ADDRESS_SPACE_HEADROOM``) that makes a larger allocation fail at once.

What a hostile scan points at outside its directory is a FIFO: opening one for reading
blocks until a writer comes, and none does, so any read from outside shows as a hang. The
reading process works in a directory of such FIFOs too, since HDF5 looks for relative names
in the current directory.

Corpora: scans written by ptycl's writers (finished HDF5 and Zarr, a separate label file,
scans whose streaming writer died mid-scan), cut at random offsets or with random bytes
flipped; files declaring other types, shapes and sizes than they hold; Zarr metadata that
lies; HDF5 links and storage that lead elsewhere. Hypothesis is derandomised (the same
examples on every run) and does not shrink: a failing example is reported as found.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ptycl.io import cxi
from ptycl.io.guards import MAX_ATTRIBUTES, MAX_JSON_DEPTH
from ptycl.io.hdf5_walk import MAX_HDF5_DEPTH
from ptycl.io.object_image import label_path_for
from ptycl.io.source import open_streaming_writer, write_scan
from tests.helpers_scans import tiny_metadata, tiny_scan

TIME_LIMIT_S = 20.0
RSS_LIMIT_MB = 256
ADDRESS_SPACE_HEADROOM = 4 << 30
BATCH = 4
REPO = Path(__file__).resolve().parent.parent

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,  # time is limited per file by the reading process, on a loaded machine
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr: unstable dtypes

# -- reading in a fresh process -----------------------------------------------------------------


def _read_all(path: Path) -> tuple[str, Any]:
    """What ``ptycl train`` and the watcher do with a scan: open, every batch, the label."""
    from ptycl.errors import PtyclError
    from ptycl.io.source import open_scan

    try:
        with open_scan(path) as source:
            frames = 0
            for batch in source.batches(BATCH):
                assert batch.indices.tolist() == list(range(frames, frames + len(batch)))
                assert batch.frames.ndim == 3 and batch.frames.shape[1:] == (
                    source.metadata.geometry.frame_shape
                )
                counts = batch.frames.astype(np.float64)
                assert np.isfinite(counts).all() and (counts >= 0).all()
                assert np.isfinite(batch.positions_m).all()
                frames += len(batch)
            label = source.label()
            assert label is None or label.values.ndim == 2
        return "read", frames
    except PtyclError as exc:
        return "refused", (str(exc), getattr(exc, "path", None))


def _reader(path: str, trap: str, send: Connection) -> None:
    """In the fresh process: work among the FIFOs, cap the address space, read, report."""
    os.chdir(trap)
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    limit = mapped + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        outcome = _read_all(Path(path))
    except BaseException as exc:  # anything but a PtyclError is what this test is after
        outcome = ("failed", "".join(traceback.format_exception(exc)))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    send.send((outcome, grown_mb))


@contextmanager
def _importable_repo() -> Iterator[None]:
    """The fork server starts with the environment it finds: let it import this module."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), previous) if p)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


@pytest.fixture(scope="module")
def server() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["ptycl.io.hdf5_scan", "ptycl.io.zarr_scan", "tests.test_io_fuzz"]
    )
    with _importable_repo():
        multiprocessing.forkserver.ensure_running()
    return context


def _run(
    server: multiprocessing.context.BaseContext,
    target: Callable[..., None],
    *args: Any,
) -> Any:
    """``target(*args, send)`` in a fresh process; what it sends, or a test failure."""
    receive, send = server.Pipe(duplex=False)
    child = server.Process(target=target, args=(*args, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(TIME_LIMIT_S):
            child.kill()
            pytest.fail(f"{args[0]}: no answer after {TIME_LIMIT_S:g} s (a hang)")
        try:
            return receive.recv()
        except EOFError:
            child.join()
            pytest.fail(f"{args[0]}: the process died (exit status {child.exitcode})")
    finally:
        child.join()
        receive.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def trap(work: Path) -> Path:
    """The reading process's current directory: every name a scan here refers to, as FIFOs."""
    directory = work / "cwd-trap"
    directory.mkdir()
    for name in (*OUTSIDE_NAMES, "other.h5", "frames.raw"):
        os.mkfifo(directory / name)
    return directory


def read_or_refuse(server: Any, trap: Path, scan: Path) -> tuple[str, Any]:
    """The property, checked; returns ("read", frames) or ("refused", message)."""
    (kind, detail), grown_mb = _run(server, _reader, str(scan), str(trap))
    assert grown_mb < RSS_LIMIT_MB, f"{scan}: peak memory grew by {grown_mb:.0f} MB"
    if kind == "failed":
        pytest.fail(f"{scan}: not a PtyclError:\n{detail}")
    if kind == "refused":
        message, named = detail
        assert "\n" not in message, message
        assert named in (str(scan), str(label_path_for(scan))), message
        assert message.startswith(f"{named}: ") and len(message) > len(named) + 2, message
        return kind, message
    return kind, detail


# -- the corpus: scans as ptycl writes them ------------------------------------------------------

OUTSIDE_NAMES = ("outside.h5", "outside.raw")
SEEDS = ("finished.h5", "finished.zarr", "separate.h5", "died.h5", "died.zarr")


def _write_and_die(path: str, send: Connection) -> None:
    """A streaming writer that stops dead after five frames (no close, no completion)."""
    writer = open_streaming_writer(Path(path), tiny_metadata((8, 8), scan_id="died"), np.uint32)
    for index in range(5):
        writer.write_frame(np.full((8, 8), index + 1, np.uint32), (index * 1e-7, 0.0))
    send.send(None)
    os._exit(0)


@pytest.fixture(scope="module")
def corpus(work: Path, server: Any) -> Path:
    directory = work / "corpus"
    directory.mkdir()
    scan = tiny_scan(n_frames=6, frame_shape=(8, 8))
    write_scan(directory / "finished.h5", scan)
    write_scan(directory / "finished.zarr", scan)
    write_scan(directory / "separate.h5", scan, labels="separate")
    for name in ("died.h5", "died.zarr"):
        _run(server, _write_and_die, str(directory / name))
    return directory


def copy_of(corpus: Path, work: Path, seed: str) -> Path:
    """A fresh directory holding one seed scan (and its label file, if any)."""
    directory = Path(tempfile.mkdtemp(dir=work))
    for source in (corpus / seed, label_path_for(corpus / seed)):
        if source.is_dir():
            shutil.copytree(source, directory / source.name)
        elif source.exists():
            shutil.copy(source, directory / source.name)
    return directory / seed


@contextmanager
def scan_copy(corpus: Path, work: Path, seed: str) -> Iterator[Path]:
    scan = copy_of(corpus, work, seed)
    try:
        yield scan
    finally:
        shutil.rmtree(scan.parent)


def test_the_corpus_reads(server: Any, trap: Path, corpus: Path) -> None:
    for seed in SEEDS:
        frames = 5 if seed.startswith("died") else 6
        assert read_or_refuse(server, trap, corpus / seed) == ("read", frames)


# -- byte-level damage ----------------------------------------------------------------------------


def _victims(scan: Path) -> list[Path]:
    if scan.is_dir():
        return sorted(p for p in scan.rglob("*") if p.is_file())
    label = label_path_for(scan)
    return [label] if label.exists() else [scan]  # separate.h5: damage its label


@pytest.mark.slow
@settings(FUZZ, max_examples=150)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_cut_or_flipped_files_are_read_or_refused(
    server: Any, trap: Path, corpus: Path, work: Path, seed: str, data: st.DataObject
) -> None:
    with scan_copy(corpus, work, seed) as scan:
        victim = data.draw(st.sampled_from(_victims(scan)), label="file")
        content = bytearray(victim.read_bytes())
        if not content or data.draw(st.booleans(), label="cut"):
            content = content[: data.draw(st.integers(0, len(content)), label="offset")]
        else:
            flips = st.tuples(st.integers(0, len(content) - 1), st.integers(1, 255))
            for offset, bits in data.draw(st.lists(flips, min_size=1, max_size=4), label="flips"):
                content[offset] ^= bits
        victim.write_bytes(bytes(content))
        read_or_refuse(server, trap, scan)


def test_a_damaged_global_heap_is_refused_not_looped_on(
    server: Any, trap: Path, corpus: Path, work: Path
) -> None:
    """The strings of a ptycl scan's attributes sit in an HDF5 global heap, which has no
    checksum; an object there of size 0 makes HDF5 walk the heap for ever."""
    with scan_copy(corpus, work, "finished.h5") as scan:
        content = bytearray(scan.read_bytes())
        heap = content.index(b"GCOL")
        content[heap + 16 : heap + 32] = bytes(16)  # the first object: index 0, size 0
        scan.write_bytes(bytes(content))
        kind, message = read_or_refuse(server, trap, scan)
        assert kind == "refused" and "corrupt global heap" in message, message


def test_a_damaged_file_of_a_dead_swmr_writer_is_refused_quickly(
    server: Any, trap: Path, corpus: Path, work: Path
) -> None:
    """HDF5 retries a SWMR file's bad metadata with doubling sleeps (2^100 ns by default):
    unbounded, the read would outlast the reading process's time limit, a test failure."""
    with scan_copy(corpus, work, "died.h5") as scan:
        os.truncate(scan, scan.stat().st_size // 2)
        kind, _ = read_or_refuse(server, trap, scan)
        assert kind == "refused"


# -- declared types, shapes and sizes ----------------------------------------------------------

DTYPES = ("uint8", "uint32", "int16", "int64", "float16", "float64", "bool", "complex64", "S3")
HUGE = 10**12


def _values(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "S":
        return np.full(shape, b"ab", dtype)
    return (np.arange(int(np.prod(shape))).reshape(shape) % 7).astype(dtype)


def replace_array(
    scan: Path,
    member: str,
    shape: tuple[int, ...],
    dtype: str,
    rows_stored: int | None = None,
    chunks: tuple[int, ...] | None = None,
) -> None:
    """Put a new array at ``member`` of a ptycl scan, declaring ``shape`` but holding only its
    first ``rows_stored`` rows (None: all of them, in contiguous storage, but at most 6)."""
    dtype_ = np.dtype(dtype)
    stored = min(shape[0], 6 if rows_stored is None else rows_stored) if shape else 0
    if chunks is None and shape:
        chunks = (1, *(max(n, 1) for n in shape[1:]))
    if scan.suffix == ".h5":
        with h5py.File(scan, "r+") as f:
            del f[member]
            # (HDF5 cannot chunk an axis of length 0)
            chunked = bool(shape) and all(shape) and (rows_stored is not None or shape[0] >= HUGE)
            array = f.create_dataset(
                member,
                shape=shape,
                dtype=dtype_,
                chunks=chunks if chunked else None,
                maxshape=(None, *shape[1:]) if chunked else None,
            )
            if shape and stored and all(shape[1:]):
                array[:stored] = _values((stored, *shape[1:]), dtype_)
            elif not shape:
                array[()] = _values((), dtype_)
        return
    root = zarr.open_group(scan, mode="r+")
    array = root.create_array(
        member,
        shape=shape,
        dtype=dtype_,
        chunks=chunks or (),
        overwrite=True,
        config={"write_empty_chunks": True},
    )
    if shape and stored and all(shape[1:]):
        array[:stored] = _values((stored, *shape[1:]), dtype_)
    elif not shape:
        array[()] = _values((), dtype_)


dims = st.sampled_from([0, 1, 2, 7, 8])
frame_shapes = st.one_of(
    st.tuples(st.sampled_from([6, 3, 0, HUGE]), dims, dims),
    st.lists(dims, min_size=0, max_size=4).map(tuple),
)
translation_shapes = st.one_of(
    st.tuples(st.sampled_from([6, 3, HUGE]), st.sampled_from([1, 2, 3, 4])),
    st.lists(dims, min_size=0, max_size=3).map(tuple),
)


@pytest.mark.slow
@settings(FUZZ, max_examples=60)
@given(
    seed=st.sampled_from(["finished.h5", "finished.zarr"]),
    frames_dtype=st.sampled_from(DTYPES),
    frames_shape=frame_shapes,
    translation_dtype=st.sampled_from(DTYPES),
    translation_shape=translation_shapes,
    rows_stored=st.sampled_from([None, 6, 2]),
)
def test_declared_types_and_shapes_are_read_or_refused(
    server: Any,
    trap: Path,
    corpus: Path,
    work: Path,
    seed: str,
    frames_dtype: str,
    frames_shape: tuple[int, ...],
    translation_dtype: str,
    translation_shape: tuple[int, ...],
    rows_stored: int | None,
) -> None:
    with scan_copy(corpus, work, seed) as scan:
        replace_array(scan, cxi.DETECTOR_DATA, frames_shape, frames_dtype, rows_stored)
        replace_array(scan, cxi.TRANSLATION, translation_shape, translation_dtype, rows_stored)
        kind, detail = read_or_refuse(server, trap, scan)
        if kind == "read":  # as far as the writer's committed count (6) and the data go
            assert np.dtype(frames_dtype).kind in "iuf" and len(frames_shape) == 3
            assert detail <= min(6, frames_shape[0], translation_shape[0])


@pytest.mark.parametrize("seed", ["finished.h5", "finished.zarr"])
@pytest.mark.parametrize(
    ("member", "shape", "dtype", "chunks", "refusal"),
    [
        # 10^12 frames (and translations) declared, 2 stored: refused at the first missing
        # one, not read as zeros for ever
        (cxi.DETECTOR_DATA, (HUGE, 8, 8), "uint32", None, "not stored"),
        # one chunk of 2^25 frames (2 GiB) declared, none stored
        (cxi.DETECTOR_DATA, (6, 8, 8), "uint8", (1 << 25, 8, 8), "chunks of"),
        (cxi.DETECTOR_DATA, (6, 1 << 14, 1 << 14), "uint32", None, "larger than"),
        (f"{cxi.IMAGE}/{cxi.IMAGE_DATA}", (1 << 15, 1 << 15), "complex64", None, "larger than"),
        (f"{cxi.IMAGE}/{cxi.IMAGE_DATA}", (4096, 4096), "complex64", None, "not stored"),
        (f"{cxi.IMAGE}/{cxi.IMAGE_DATA}", (5, 5, 5), "complex64", None, "2-D complex"),
        (cxi.DISTANCE, (10**9,), "float64", None, "must be one number"),
        (cxi.MASK, (1 << 20, 1 << 20), "uint32", None, "mask is"),
    ],
)
def test_huge_declared_sizes_are_refused_before_reading(
    server: Any,
    trap: Path,
    corpus: Path,
    work: Path,
    seed: str,
    member: str,
    shape: tuple[int, ...],
    dtype: str,
    chunks: tuple[int, ...] | None,
    refusal: str,
) -> None:
    with scan_copy(corpus, work, seed) as scan:
        replace_array(
            scan, member, shape, dtype, rows_stored=2 if shape[0] > 6 else 0, chunks=chunks
        )
        if shape[0] == HUGE:  # one translation per frame, as a finished scan must have
            replace_array(scan, cxi.TRANSLATION, (HUGE, 3), "float64", rows_stored=2)
        kind, message = read_or_refuse(server, trap, scan)
        assert kind == "refused" and refusal in message, message


def test_large_frames_come_in_smaller_batches(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever batch a reader asks for, one read holds at most MAX_READ_BYTES of frames."""
    from ptycl.io import base, source

    monkeypatch.setattr(base, "MAX_READ_BYTES", 2 * 8 * 8 * 4)  # two 8x8 uint32 frames
    with source.open_scan(corpus / "finished.h5") as scan:
        assert [len(batch) for batch in scan.batches(4)] == [2, 2, 2]


def test_a_huge_hdf5_attribute_is_refused(
    server: Any, trap: Path, corpus: Path, work: Path
) -> None:
    with scan_copy(corpus, work, "finished.h5") as scan:
        with h5py.File(scan, "r+") as f:
            f.attrs["notes"] = np.zeros(5 << 20)  # 40 MB of "free-form metadata"
        kind, message = read_or_refuse(server, trap, scan)
        assert kind == "refused" and "attribute 'notes'" in message, message


@pytest.mark.parametrize("seed", ["finished.h5", "finished.zarr"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("member", [cxi.DETECTOR_DATA, cxi.TRANSLATION])
def test_nan_and_inf_frames_and_positions_name_the_frame(
    server: Any, trap: Path, corpus: Path, work: Path, seed: str, bad: float, member: str
) -> None:
    with scan_copy(corpus, work, seed) as scan:
        root = h5py.File(scan, "r+") if scan.suffix == ".h5" else zarr.open_group(scan, mode="r+")
        values = np.asarray(root[member][...], dtype=np.float32)
        values[4, 1] = bad
        del root[member]
        if scan.suffix == ".h5":
            root.create_dataset(member, data=values)
            root.close()
        else:
            root.create_array(member, data=values, config={"write_empty_chunks": True})
        kind, message = read_or_refuse(server, trap, scan)
        assert kind == "refused"
        if member == cxi.DETECTOR_DATA:
            assert "frame 4 has NaN or infinite counts" in message, message
        else:
            assert "translation of frame 4 is not finite" in message, message


# -- Zarr metadata that lies ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
sizes = st.lists(st.sampled_from([-1, 0, 1, 2, 6, 8, 1 << 20, HUGE]), min_size=0, max_size=4)
ZARR_LIES = {
    "shape": sizes | json_values,
    "data_type": st.sampled_from(["uint32", "float32", "int64", "bool", "complex128", "string"])
    | json_values,
    "chunk_grid": sizes.map(
        lambda shape: {"name": "regular", "configuration": {"chunk_shape": shape}}
    )
    | json_values,
    "fill_value": json_values,
    "codecs": st.just([{"name": "bytes"}]) | json_values,
}
ARRAYS = (
    cxi.DETECTOR_DATA,
    cxi.TRANSLATION,
    cxi.MASK,
    cxi.DISTANCE,
    f"{cxi.IMAGE}/{cxi.IMAGE_DATA}",
    f"{cxi.IMAGE}/{cxi.IMAGE_CENTER}",
)


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.slow
@settings(FUZZ, max_examples=50)
@given(
    seed=st.sampled_from(["finished.zarr", "died.zarr"]),
    member=st.sampled_from(ARRAYS),
    lie=st.sampled_from(sorted(ZARR_LIES)).flatmap(lambda k: st.tuples(st.just(k), ZARR_LIES[k])),
)
def test_zarr_array_metadata_that_lies(
    server: Any,
    trap: Path,
    corpus: Path,
    work: Path,
    seed: str,
    member: str,
    lie: tuple[str, Any],
) -> None:
    with scan_copy(corpus, work, seed) as scan:
        document = scan / member / "zarr.json"
        if not document.exists():
            return  # the died scan has no label
        field, value = lie
        _edit_json(document, lambda d: d.__setitem__(field, value))
        read_or_refuse(server, trap, scan)


@pytest.mark.slow
@settings(FUZZ, max_examples=40)
@given(
    seed=st.sampled_from(["finished.zarr", "died.zarr"]),
    committed=st.integers(-5, HUGE) | json_values,
    complete=st.booleans() | json_values,
)
def test_zarr_committed_count_that_lies(
    server: Any, trap: Path, corpus: Path, work: Path, seed: str, committed: Any, complete: Any
) -> None:
    with scan_copy(corpus, work, seed) as scan:

        def lie(document: dict[str, Any]) -> None:
            document["attributes"][cxi.ZARR_COMMITTED_ATTR] = committed
            document["attributes"][cxi.ZARR_COMPLETE_ATTR] = complete

        _edit_json(scan / "zarr.json", lie)
        kind, detail = read_or_refuse(server, trap, scan)
        if kind == "read":  # only an honest count reads, and only as far as the data go
            assert type(committed) is int and 0 <= committed
            assert type(complete) is bool and detail == min(committed, 6 if seed[0] == "f" else 5)


stream_values = (
    st.integers(-(2**62), 2**62).map(np.int64)
    | st.sampled_from([np.float64(3.0), np.array([1, 2]), np.bytes_(b"7"), np.int8(1)])
    | st.none()
)


@settings(FUZZ, max_examples=30)
@given(committed=stream_values, complete=stream_values)
def test_hdf5_stream_state_that_lies(
    server: Any, trap: Path, corpus: Path, work: Path, committed: Any, complete: Any
) -> None:
    with scan_copy(corpus, work, "finished.h5") as scan:
        with h5py.File(scan, "r+") as f:
            for member, value in ((cxi.COMMITTED_FRAMES, committed), (cxi.COMPLETE, complete)):
                del f[member]
                if value is not None:
                    f[member] = value
        kind, _ = read_or_refuse(server, trap, scan)
        if kind == "read":
            assert complete is not None and committed is not None and 0 <= int(committed)


# -- links, virtual datasets, external storage and other files in the scan's place ----------------


Where = dict[str, Path]  # "here": the scan's directory, "outside": the one above it
Maker = Callable[[h5py.File, str, Where], None]


def _external_link(target: str) -> Maker:
    def make(f: h5py.File, member: str, where: Where) -> None:
        f[member] = h5py.ExternalLink(target.format(**where), "/frames")

    return make


def _virtual(source: str, frames: int = 6) -> Maker:
    def make(f: h5py.File, member: str, where: Where) -> None:
        layout = h5py.VirtualLayout(shape=(6, 8, 8), dtype=np.uint32)
        layout[:frames] = h5py.VirtualSource(source.format(**where), "frames", shape=(frames, 8, 8))
        f.create_virtual_dataset(member, layout)

    return make


def _virtual_pattern(f: h5py.File, member: str, where: Where) -> None:
    """Frames from files frames0.h5, frames1.h5, ... as many as there are (h5py has no
    high-level way to write one)."""
    unlimited = h5py.h5s.UNLIMITED
    space = h5py.h5s.create_simple((6, 8, 8), (unlimited, 8, 8))
    mapping = h5py.h5s.create_simple((6, 8, 8), (unlimited, 8, 8))
    mapping.select_hyperslab((0, 0, 0), (unlimited, 1, 1), block=(1, 8, 8))
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_virtual(mapping, b"frames%b.h5", b"frames", h5py.h5s.create_simple((1, 8, 8)))
    h5py.h5d.create(f.id, member.encode(), h5py.h5t.NATIVE_UINT32, space, dcpl=plist)


def _external_storage(name: str) -> Maker:
    def make(f: h5py.File, member: str, where: Where) -> None:
        storage = [(name.format(**where), 0, 6 * 256)]
        f.create_dataset(member, shape=(6, 8, 8), dtype=np.uint32, external=storage)

    return make


REFERENCES: dict[str, tuple[Maker, str]] = {
    # how the frames are made (what they need beside the scan is always there), the outcome
    "link beside": (_external_link("frames.h5"), "read"),
    "link outside": (_external_link("../outside.h5"), "leads outside"),
    "absolute link outside": (_external_link("{outside}/outside.h5"), "leads outside"),
    # missing beside the scan, so HDF5 would open the current directory's (a FIFO here)
    "link into the current directory": (_external_link("other.h5"), "cwd-trap/other.h5"),
    "link to a file linking outside": (_external_link("relay.h5"), "leads outside"),
    "virtual beside": (_virtual("frames.h5"), "read"),
    "virtual outside": (_virtual("../outside.h5"), "leads outside"),
    "virtual source missing": (_virtual("gone.h5"), "no such file"),
    "virtual mapping short": (_virtual("frames.h5", frames=4), "maps 256 of the 384"),
    "virtual source pattern": (_virtual_pattern, "pattern"),
    "external storage outside": (_external_storage("../outside.raw"), "outside"),
    # HDF5 reads relative external storage from the current directory, not the scan's
    "external storage relative": (_external_storage("frames.raw"), "outside"),
    "external storage absolute": (_external_storage("{here}/frames.raw"), "read"),
    "external storage short": (_external_storage("{here}/short.raw"), "holds 40"),
}


@pytest.fixture(scope="module")
def outside(work: Path) -> Path:
    """Where hostile scans point: FIFOs beside the scan copies' directories, which block
    whoever opens them for reading."""
    for name in OUTSIDE_NAMES:
        os.mkfifo(work / name)
    return work


def _things_beside(here: Path, outside: Path) -> None:
    with h5py.File(here / "frames.h5", "w") as f:
        f["frames"] = np.ones((6, 8, 8), np.uint32)
    with h5py.File(here / "relay.h5", "w") as f:
        f["frames"] = h5py.ExternalLink(str(outside / "outside.h5"), "/frames")
    (here / "frames.raw").write_bytes(np.ones(6 * 64, np.uint32).tobytes())
    (here / "short.raw").write_bytes(np.ones(10, np.uint32).tobytes())


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_links_and_storage_leading_out_of_the_scan_are_refused(
    server: Any, trap: Path, corpus: Path, work: Path, outside: Path, case: str
) -> None:
    make, outcome = REFERENCES[case]
    with scan_copy(corpus, work, "finished.h5") as scan:
        _things_beside(scan.parent, outside)
        with h5py.File(scan, "r+") as f:
            del f[cxi.DETECTOR_DATA]
            make(f, cxi.DETECTOR_DATA, {"here": scan.parent, "outside": outside})
        kind, detail = read_or_refuse(server, trap, scan)
    if outcome == "read":
        assert (kind, detail) == ("read", 6)
    else:
        assert kind == "refused" and outcome in detail, detail


def _fifo_scan(scan: Path, outside: Path) -> None:
    scan.unlink()
    os.mkfifo(scan)


def _fifo_label(scan: Path, outside: Path) -> None:
    label_path_for(scan).unlink()
    os.mkfifo(label_path_for(scan))


def _chunk_link(target: str) -> Callable[[Path, Path], None]:
    def make(scan: Path, outside: Path) -> None:
        chunk = scan / cxi.DETECTOR_DATA / "c" / "3" / "0" / "0"
        chunk.unlink()
        chunk.symlink_to(target.format(outside=outside))

    return make


def _document_link(scan: Path, outside: Path) -> None:
    document = scan / cxi.DETECTOR_DATA / "zarr.json"
    shutil.move(document, outside / f"{scan.parent.name}.json")
    document.symlink_to(outside / f"{scan.parent.name}.json")


def _directory_as_hdf5(scan: Path, outside: Path) -> None:
    scan.unlink()
    scan.mkdir()


NOT_REGULAR = {
    "scan is a FIFO": ("separate.h5", _fifo_scan, "not a regular file"),
    "label is a FIFO": ("separate.h5", _fifo_label, "not a regular file"),
    "scan is a directory": ("finished.h5", _directory_as_hdf5, "not a regular file"),
    "chunk links to /dev/zero": ("finished.zarr", _chunk_link("/dev/zero"), "outside the scan"),
    "chunk links outside": ("finished.zarr", _chunk_link("{outside}/outside.raw"), "outside"),
    "chunk links within": ("finished.zarr", _chunk_link("../../2/0/0"), "read"),
    "metadata links outside": ("finished.zarr", _document_link, "outside the scan"),
}


@pytest.mark.parametrize("case", sorted(NOT_REGULAR))
def test_fifos_devices_and_symbolic_links_out_are_refused(
    server: Any, trap: Path, corpus: Path, work: Path, outside: Path, case: str
) -> None:
    seed, make, outcome = NOT_REGULAR[case]
    with scan_copy(corpus, work, seed) as scan:
        make(scan, outside)
        kind, detail = read_or_refuse(server, trap, scan)
    if outcome == "read":
        assert (kind, detail) == ("read", 6)
    else:
        assert kind == "refused" and outcome in detail, detail


# -- part two: work without bound, scans that are links, names, frames no detector records -------


def _nested(opener: str, closer: str, depth: int) -> str:
    return opener * depth + "0" + closer * depth


@pytest.mark.slow
@settings(FUZZ, max_examples=16)
@given(
    seed=st.sampled_from(("finished.h5", "finished.zarr")),
    depth=st.one_of(st.integers(1, 200), st.integers(200, 5000)),
    data=st.data(),
)
def test_nesting_is_read_within_its_bound_and_refused_beyond(
    server: Any, trap: Path, corpus: Path, work: Path, seed: str, depth: int, data: st.DataObject
) -> None:
    """Nested groups (HDF5) or nested JSON in a document's attributes (Zarr): up to the bound
    the scan reads, beyond it one line; never a RecursionError or a walk quadratic in depth."""
    with scan_copy(corpus, work, seed) as scan:
        if scan.is_dir():
            read = ("", cxi.DETECTOR_DATA, cxi.TRANSLATION)  # documents every read parses
            document = scan / data.draw(st.sampled_from(read), label="doc") / "zarr.json"
            meta = json.loads(document.read_text())
            meta.setdefault("attributes", {})["deep"] = "@@"
            opener, closer = data.draw(st.sampled_from((("[", "]"), ('{"a":', "}"))), label="kind")
            # the document's own nesting: attributes under the top level, the value in them
            text = json.dumps(meta).replace('"@@"', _nested(opener, closer, depth))
            document.write_text(text)
            bound = MAX_JSON_DEPTH - 2
        else:
            with h5py.File(scan, "r+") as f:
                group = f
                for _ in range(depth):
                    group = group.create_group("g")
            bound = MAX_HDF5_DEPTH
        kind, detail = read_or_refuse(server, trap, scan)
    assert kind == ("read" if depth <= bound else "refused"), detail


@settings(FUZZ, max_examples=8)
@given(extra=st.one_of(st.integers(0, 50), st.integers(MAX_ATTRIBUTES, 3 * MAX_ATTRIBUTES)))
def test_attributes_are_read_within_their_bound_and_refused_beyond(
    server: Any, trap: Path, corpus: Path, work: Path, extra: int
) -> None:
    with scan_copy(corpus, work, "finished.h5") as scan:
        with h5py.File(scan, "r+") as f:
            for index in range(extra):
                f.attrs[f"extra{index}"] = index
            count = len(f.attrs)
        kind, detail = read_or_refuse(server, trap, scan)
    assert kind == ("read" if count <= MAX_ATTRIBUTES else "refused"), detail


LINK_TARGETS = ("a scan elsewhere", "a FIFO", "/dev/zero", "/etc", "nothing", "a scan beside")


@settings(FUZZ, max_examples=12)
@given(seed=st.sampled_from(SEEDS), target=st.sampled_from(LINK_TARGETS))
def test_a_scan_that_is_a_symbolic_link_is_refused_before_it_is_opened(
    server: Any, trap: Path, corpus: Path, work: Path, outside: Path, seed: str, target: str
) -> None:
    with scan_copy(corpus, work, seed) as scan:
        elsewhere = outside / f"{scan.parent.name}{scan.suffix}"
        if scan.is_dir():
            shutil.copytree(scan, elsewhere)
        else:
            shutil.copy(scan, elsewhere)
        places = {
            "a scan elsewhere": elsewhere,
            "a FIFO": trap / OUTSIDE_NAMES[0],
            "/dev/zero": Path("/dev/zero"),
            "/etc": Path("/etc"),
            "nothing": outside / "missing.h5",
            "a scan beside": scan,
        }
        link = scan.with_name(f"link{scan.suffix}")
        link.symlink_to(places[target])
        kind, detail = read_or_refuse(server, trap, link)
    assert kind == "refused" and "a symbolic link" in detail, detail


@settings(FUZZ, max_examples=30)
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1))
def test_a_name_never_splits_the_line_that_refuses_it(tmp_path_factory: Any, name: str) -> None:
    """Control characters in a name (a newline, a tab, an escape sequence) come out escaped."""
    from ptycl.errors import PtyclError, printable
    from ptycl.io.source import open_scan

    if name in (".", ".."):
        return
    path = tmp_path_factory.mktemp("names") / f"{name}.h5"
    path.write_bytes(b"not hdf5")
    with pytest.raises(PtyclError) as err:
        open_scan(path)
    message = str(err.value)
    assert message.isprintable() and message.startswith(printable(path)), message


@settings(FUZZ, max_examples=40)
@given(
    n=st.integers(1, 30),
    zero=st.sets(st.integers(0, 29)),
    garbage=st.dictionaries(st.integers(0, 29), st.integers(2**31, 2**32 - 1)),
    dtype=st.sampled_from(("uint32", "int64", "float32", "float64")),
)
def test_frames_no_detector_records_are_skipped_whatever_the_reads(
    n: int, zero: set[int], garbage: dict[int, int], dtype: str
) -> None:
    """The screen keeps the same frames whether a scan is read whole or frame by frame."""
    from ptycl.prep.frame_screen import FrameScreen

    frames = np.random.default_rng(n).integers(1, 5000, (n, 6, 6)).astype(dtype)
    frames[[i for i in zero if i < n]] = 0
    for index, value in garbage.items():
        if index < n:
            frames[index, index % 6, 2] = value
    expected = np.array([i not in zero and i not in garbage for i in range(n)])
    whole, one_by_one = FrameScreen(), FrameScreen()
    assert (whole.keep(frames) == expected).all()
    kept = np.concatenate([one_by_one.keep(frames[i : i + 1]) for i in range(n)])
    assert (kept == expected).all() and whole.skipped == one_by_one.skipped
    assert whole.total_skipped == n - expected.sum()
