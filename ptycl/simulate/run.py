"""Simulated scans written to disk: ``simulate_scans``, the work of ``ptycl simulate``.

Scan i belongs to domain i mod the number of domains (``simulate.domains``, or one per family).
With ``simulate.unseen_scans_per_domain`` k > 0, each domain d also gets k scans that the
stream never trains on, ``out_dir/unseen/domainDD_FAMILY_K.h5``, from random numbers
(simulate.seed, d, K, 1).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ptycl.config import SimulateSettings
from ptycl.errors import OutputError, ScanError
from ptycl.io.object_image import label_path_for, write_object_image
from ptycl.io.records import SimulatedScan
from ptycl.io.source import SUFFIXES, bytes_on_disk, open_scan, open_streaming_writer, write_scan
from ptycl.logs import progress
from ptycl.outputs import prepare_output_dir, require_free_space

log = logging.getLogger("ptycl.simulate")

# Stored with every scan so that a later run can tell whether a file on disk is the scan it
# would simulate; settings that change only how or where it is written are left out.
NOT_PROVENANCE = {"out_dir", "format", "n_scans", "frame_rate_hz", "labels"}
PROVENANCE_ATTR = "simulate_settings"


def scan_path(settings: SimulateSettings, scan_index: int) -> Path:
    family = settings.domain(scan_index).family
    return settings.out_dir / f"scan{scan_index:04d}_{family}{SUFFIXES[settings.format]}"


UNSEEN_DIR = "unseen"


def unseen_scan_paths(settings: SimulateSettings) -> list[list[Path]]:
    """Per domain, the paths of its ``unseen_scans_per_domain`` evaluation scans."""
    return [
        [
            settings.out_dir
            / UNSEEN_DIR
            / f"domain{index:02d}_{domain.family}_{k}{SUFFIXES[settings.format]}"
            for k in range(settings.unseen_scans_per_domain)
        ]
        for index, domain in enumerate(settings.all_domains())
    ]


def _unseen_rng(settings: SimulateSettings, domain_index: int, k: int) -> np.random.Generator:
    # A longer seed sequence than the training scans' (seed, i): never the same numbers.
    return np.random.default_rng([settings.seed, domain_index, k, 1])


def _provenance(settings: SimulateSettings) -> str:
    return settings.model_dump_json(exclude=NOT_PROVENANCE)


def _reusable(path: Path, settings: SimulateSettings) -> bool:
    """A complete scan on disk made from these settings, with its label where asked."""
    if not path.exists():
        return False
    try:
        with open_scan(path) as source:
            same = source.metadata.attrs.get(PROVENANCE_ATTR) == _provenance(settings)
            done = source.is_complete() and source.n_committed() == settings.frames_per_scan
            labelled = settings.labels == "none" or source.label() is not None
    except ScanError:
        return False
    return same and done and labelled


def _bytes_needed(scan: SimulatedScan) -> int:
    """What a scan takes on disk, with room for its metadata and a separate label."""
    return scan.frames.nbytes + 2 * scan.truth.values.nbytes + (1 << 20)


def _stream(path: Path, scan: SimulatedScan, settings: SimulateSettings) -> None:
    """Write frame by frame at ``frame_rate_hz``, as a detector would."""
    label = scan.truth if settings.labels == "in_scan" else None
    period_s = 1.0 / settings.frame_rate_hz
    with open_streaming_writer(path, scan.metadata, scan.frames.dtype, label=label) as writer:
        start = time.monotonic()
        for index in progress(range(len(scan.frames)), desc=path.name, total=len(scan.frames)):
            writer.write_frame(scan.frames[index], scan.positions_m[index])
            # Pace against the start, not the last frame, so slow writes do not add up.
            time.sleep(max(0.0, start + (index + 1) * period_s - time.monotonic()))
        writer.mark_complete()
    if settings.labels == "separate":
        write_object_image(label_path_for(path), scan.truth)


def simulate_scans(settings: SimulateSettings, reuse_existing: bool = False) -> list[Path]:
    """Simulate and write ``settings.n_scans`` scans, and the unseen scans of every domain
    (``unseen_scan_paths``); return the training scans' paths in scan order."""
    from ptycl.simulate.beamline import simulate_scan  # the physics imports scipy and friends

    prepare_output_dir(settings.out_dir, "scans")
    paths: list[Path] = []
    written_frames = written_bytes = reused = 0
    start = time.monotonic()
    # (path, scan index that picks the domain, random numbers, scan id or None)
    jobs = [
        (scan_path(settings, i), i, np.random.default_rng([settings.seed, i]), None)
        for i in range(settings.n_scans)
    ]
    for domain_index, domain_paths in enumerate(unseen_scan_paths(settings)):
        for k, path in enumerate(domain_paths):
            jobs.append((path, domain_index, _unseen_rng(settings, domain_index, k), path.stem))
    for path, scan_index, rng, scan_id in progress(jobs, desc="simulate", total=len(jobs)):
        if scan_id is None:
            paths.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if reuse_existing and _reusable(path, settings):
            reused += 1
            continue
        scan = simulate_scan(settings, scan_index, rng, scan_id)
        attrs = {**scan.metadata.attrs, PROVENANCE_ATTR: _provenance(settings)}
        scan = replace(scan, metadata=replace(scan.metadata, attrs=attrs))
        # A label left beside by an earlier run would not fit this scan.
        label_path_for(path).unlink(missing_ok=True)
        require_free_space(settings.out_dir, _bytes_needed(scan), path.name)
        try:
            if settings.frame_rate_hz is None or scan_id is not None:  # unseen scans: no stream
                write_scan(path, scan, settings.format, settings.labels)
            else:
                _stream(path, scan, settings)
        except (OSError, RuntimeError) as exc:  # h5py's write failures are either
            raise OutputError(path, f"cannot write the scan ({exc})") from None
        written_frames += len(scan.frames)
        written_bytes += bytes_on_disk(path) + bytes_on_disk(label_path_for(path))
        log.debug("wrote %s (%d frames)", path, len(scan.frames))
    log.info(
        "simulate: wrote %d scan(s), %d frames, %.1f MB in %.1f s to %s%s",
        len(jobs) - reused,
        written_frames,
        written_bytes / 1e6,
        time.monotonic() - start,
        settings.out_dir,
        f" ({reused} complete scan(s) reused)" if reused else "",
    )
    return paths
