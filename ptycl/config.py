"""Run configuration: one YAML file per run, validated into typed settings.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming the
key before any work starts. Command-line overrides use dotted keys (``--set train.alpha=0.3``);
their values are parsed as YAML scalars.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from ptycl.errors import ConfigError
from ptycl.strict_yaml import YamlInputError, load_yaml_text, read_yaml_file

QUOTE = reprlib.Repr()  # how much of a refused value a message quotes
QUOTE.maxlevel, QUOTE.maxstring, QUOTE.maxother, QUOTE.maxlist, QUOTE.maxdict = 2, 60, 60, 4, 4

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Seeds are offset per scan and segment and fed to numpy (non-negative) and torch (64 bits).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Rows of one step: more than any memory holds at 64² (a bound, not advice)
BatchSize = Annotated[int, Field(ge=1, le=1 << 16)]
SampleFamily = Literal["manhattan", "particles", "siemens", "texture"]


class Section(BaseModel):
    # No setting means anything at infinity or NaN (a learning rate of .inf trains weights to
    # non-finite values without a word): refused with the rest.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DetectorSettings(Section):
    dtype: Literal["uint16", "uint32"] = "uint32"
    saturation_counts: PositiveInt = 2**20  # pixel full well; counts above are clipped
    threshold_counts: Annotated[int, Field(ge=0)] = 0  # counts at or below read as 0
    bad_pixel_fraction: Fraction = 0.0
    gap_columns: Annotated[int, Field(ge=0)] = 0  # width of a vertical module gap at the centre


ProbeKind = Literal["zone_plate", "aperture"]


class DomainSettings(Section):
    """One domain of a stream: a sample family seen through its own kind and size of probe
    (a change of probe is what most changes what a PtychoNN-style model must learn)."""

    family: SampleFamily
    probe: ProbeKind = "zone_plate"
    probe_diameter_px: Annotated[float, Field(gt=1.0)] = 16.0  # in object pixels


class SimulateSettings(Section):
    """The simulated beamline (``ptycl simulate``).

    Scan i belongs to domain i mod len(domains). ``domains`` empty: one domain per family of
    ``families``, all seen through ``probe`` of ``probe_diameter_px``.
    """

    out_dir: Path = Path("data/sim")
    format: Literal["hdf5", "zarr"] = "hdf5"
    families: list[SampleFamily] = ["manhattan", "particles", "siemens", "texture"]
    n_scans: PositiveInt = 4  # scans cycle through ``families`` in order
    frame_size: PositiveInt = 64  # detector frame (H = W), pixels
    frames_per_scan: PositiveInt = 400
    scan_path: Literal["fermat", "raster"] = "fermat"
    step_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.35  # step / probe diameter (overlap)
    jitter_fraction: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05  # position jitter / step
    probe: ProbeKind = "zone_plate"
    probe_diameter_px: Annotated[float, Field(gt=1.0)] = 16.0  # in object pixels
    domains: list[DomainSettings] = []
    # Per domain, this many further scans (own random numbers, never trained on) written to
    # out_dir/unseen/: how well a model knows the domain beyond the scans it was taught.
    unseen_scans_per_domain: Annotated[int, Field(ge=0)] = 0
    # A scan whose median patch already predicts every frame to within this phase error (rad,
    # offset-free, over the probe's disc) gets another object: a near-flat scan scores nothing.
    min_phase_contrast_rad: Annotated[float, Field(ge=0.0)] = 0.0
    photons_per_frame: PositiveFloat = 1e6
    energy_ev: PositiveFloat = 8800.0
    distance_m: PositiveFloat = 2.0
    detector_pixel_m: PositiveFloat = 75e-6
    detector: DetectorSettings = DetectorSettings()
    frame_rate_hz: PositiveFloat | None = None  # set: write in real time, frame by frame
    labels: Literal["in_scan", "separate", "none"] = "in_scan"
    seed: Seed = 0

    @model_validator(mode="after")
    def _probe_fits(self) -> SimulateSettings:
        for domain in self.all_domains():
            if domain.probe_diameter_px >= self.frame_size:
                raise ValueError(
                    f"probe_diameter_px {domain.probe_diameter_px} must be smaller than "
                    f"frame_size {self.frame_size}"
                )
        return self

    def all_domains(self) -> list[DomainSettings]:
        if self.domains:
            return list(self.domains)
        return [
            DomainSettings(
                family=family, probe=self.probe, probe_diameter_px=self.probe_diameter_px
            )
            for family in self.families
        ]

    def domain(self, scan_index: int) -> DomainSettings:
        domains = self.all_domains()
        return domains[scan_index % len(domains)]


class IOSettings(Section):
    """How scan files are read."""

    # What a file's translations mean: "auto" takes what the file's writer says (ptycl and
    # ptychodus mark their files), else CXI's sample translation; "probe" or "sample" overrides
    # it (``ptycl.io.positions``). ``ptycl info`` prints which was used and why.
    position_convention: Literal["auto", "probe", "sample"] = "auto"


class PrepSettings(Section):
    """Frames to model inputs, object images to label patches."""

    input_size: Literal[64, 128, 256] = 64
    # How to get from the detector frame to input_size: "crop" keeps the centre (coarser
    # real-space pixel, same field of view), "bin" sums blocks (same pixel, smaller field).
    resize: Literal["crop", "bin"] = "crop"
    holdout_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1


class ModelSettings(Section):
    # channels of the first encoder level, doubled at each level (the bound: 2^depth x it
    # channels at the bottom is already more than a GPU holds the activations of)
    width: Annotated[int, Field(ge=1, le=1024)] = 32
    depth: Annotated[int, Field(ge=2, le=5)] = 3  # pooling levels in the encoder
    # GroupNorm after every convolution ("none": the published network's plain conv-ReLU); see
    # ptycl.model.ptychonn for why it is on by default.
    norm: Literal["group", "none"] = "group"
    # Rank of a linear path from the whole frame to both heads (0: none, the published network);
    # see ptycl.model.ptychonn. Costs 3 x rank x input_size^2 parameters.
    linear_rank: Annotated[int, Field(ge=0)] = 0
    # Fast paths, for GPUs above all; each gives the plain path's outputs within the tolerance
    # stated in tests/test_model_fast_paths.py. bf16: the convolutions run under bfloat16
    # autocast (the heads' sigmoid and tanh in float32); channels_last: NHWC memory layout,
    # which tensor cores and cuDNN prefer.
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    # torch.compile the forward (Inductor: fused kernels; on a CPU, C++ through the system
    # compiler). Costs a compilation of tens of seconds at the first batch of each shape, so it
    # pays on long runs and large scans; same outputs within the tolerance of the fast-path tests.
    compile: bool = False


class StoreSettings(Section):
    """The rehearsal store; under MPI, capacities are per rank (each rank holds one shard)."""

    capacity_samples: PositiveInt | None = 600
    capacity_bytes: PositiveInt | None = None  # alternative to capacity_samples
    half_precision: bool = False  # store frames, labels and outputs as float16
    # reservoir: uniform over the stream; balanced: equal share per scan; loss_aware: evict
    # easy samples (low task loss at insertion) first. Same meaning with one rank or many.
    policy: Literal["reservoir", "balanced", "loss_aware"] = "reservoir"
    # Where shards live: host memory (pinned when CUDA is available) or GPU memory.
    device: Literal["cpu", "cuda"] = "cpu"
    prefetch: bool = True  # fetch the next step's replay draws over MPI in the background

    @model_validator(mode="after")
    def _one_capacity(self) -> StoreSettings:
        if (self.capacity_samples is None) == (self.capacity_bytes is None):
            raise ValueError("set exactly one of capacity_samples and capacity_bytes")
        return self


class TrainSettings(Section):
    strategy: str = "derpp"  # a name in ptycl.train.strategies.STRATEGIES
    steps_per_scan: PositiveInt = 200
    # Both batch sizes count all MPI ranks together: under `mpiexec -n N` each rank takes its
    # share of every step's rows (and of every draw), so N ranks take the steps one process
    # would (each must be at least N).
    batch_size: BatchSize = 32
    replay_batch_size: BatchSize = 16  # per replay draw (a strategy may draw more than once)
    alpha: Annotated[float, Field(ge=0.0)] = 0.3  # DER logit-matching weight
    beta: Annotated[float, Field(ge=0.0)] = 0.5  # DER++ replayed-label weight
    lr: PositiveFloat = 1e-3
    lr_min: Annotated[float, Field(ge=0.0)] = 1e-4
    schedule: Literal["cosine", "cyclic", "constant"] = "cosine"
    # Adam's moment estimates: started afresh when a new scan begins training, or carried over
    # from the scans before (they kept a continual run from learning later scans).
    optimizer_state: Literal["fresh_per_scan", "carried"] = "fresh_per_scan"
    loss: Literal["mae", "mse"] = "mae"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every_steps: Annotated[int, Field(ge=0)] = 100  # 0: only at scan ends
    # Checkpoints kept on disk (the newest first): a resume skips a damaged newest one and
    # takes the one before, so keep at least 2 for that fallback. 2 by default: a laptop's
    # disk holds the newest and its fallback, each mostly the rehearsal store.
    keep_checkpoints: PositiveInt = 2
    store: StoreSettings = StoreSettings()


class WatchSettings(Section):
    """The beamline file watcher (``ptycl watch DIR``); see ``ptycl.stream.watch``."""

    # Discover scans by polling the directory instead of inotify: for NFS/Lustre/GPFS, where
    # inotify does not see writes from other nodes (also ``ptycl watch --polling``).
    polling: bool = False
    poll_interval_s: PositiveFloat = 0.2  # how often growing scans (and, polling, DIR) are read
    # Training granularity: a scan's frames are trained on in segments of this many frames as
    # they arrive (the last segment of a scan may be shorter).
    segment_frames: PositiveInt = 128
    # A scan of this many frames gets train.steps_per_scan optimiser steps, as in `ptycl
    # train`; a segment gets steps in proportion to its frames (a constant cost per frame).
    nominal_frames_per_scan: PositiveInt = 400
    # A finished scan without a label waits this long for one before it is reconstructed
    # with the current model (a label arriving later still trains on it).
    label_wait_s: Annotated[float, Field(ge=0.0)] = 2.0
    # A file seen only as "created" (no rename or close event) must stay unchanged this long
    # before a finished-looking scan in it is read; a growing ptycl scan is followed at once.
    settle_s: Annotated[float, Field(ge=0.0)] = 1.0
    # A file that cannot be opened and has not changed for this long is quarantined.
    unreadable_after_s: PositiveFloat = 10.0
    # A scan that gets no new frame for this long and is never marked complete is quarantined
    # as stalled (None: wait for ever).
    stall_timeout_s: PositiveFloat | None = 600.0
    # A scan with more frames than this is quarantined once it passes them. Every rank holds a
    # scan's prepared frames until the scan is trained (16 KB a frame at 64², 64 KB at 128²:
    # 1.6 GB and 6.4 GB at the default), so this bounds memory whatever a file declares.
    max_frames_per_scan: PositiveInt = 100_000
    # Where reconstructions of unlabelled scans go (None: beside the scan, <stem>.recon.h5/png).
    recon_dir: Path | None = None
    status_every_s: PositiveFloat = 5.0  # the live status line (and status.json)
    # After each trained scan the error matrices get a row for it and for at most this many
    # earlier trained scans, a uniform sample of the whole run kept as a reservoir
    # (ptycl.stream.evaluation_set): evaluating every scan seen would cost time and memory
    # growing with the run; a window of the latest scans would never measure forgetting.
    evaluation_scans: PositiveInt = 16


class LabelSettings(Section):
    """Labels from an iterative reconstruction of each scan (``ptycl label SCAN``, pty-chi)."""

    engine: Literal["lsqml"] = "lsqml"
    # Budgets: the reconstruction stops after ``iterations`` epochs (passes over the frames)
    # or once it has run ``time_budget_s``, whichever comes first; the label records which.
    iterations: PositiveInt = 100
    time_budget_s: PositiveFloat | None = 600.0
    # Frames per LSQML update: smaller batches take more updates per epoch and converged in
    # fewer epochs on the simulated scans (docs/labels-iterative.md).
    batch_size: PositiveInt = 32
    refine_probe: bool = True
    # Initial probe when neither --probe FILE nor the scan's metadata (``probe_diameter_px``,
    # as ptycl's simulator writes it) gives one: a disc this many object pixels across.
    probe_diameter_px: Annotated[float, Field(gt=1.0)] | None = None
    # Photons incident on the sample per frame, where the beamline measures them: the label's
    # amplitude is then the transmission (the scan's ``photons_per_frame`` attribute, as the
    # simulator writes it, serves too); unknown, it is normalised (ptycl.label.conventions).
    incident_photons_per_frame: PositiveFloat | None = None
    # auto: the training device (CUDA when available), else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class RunSettings(Section):
    name: str = "ptycl-run"
    output_dir: Path = Path("runs/ptycl-run")
    seed: Seed = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(Section):
    run: RunSettings = RunSettings()
    simulate: SimulateSettings = SimulateSettings()
    io: IOSettings = IOSettings()
    prep: PrepSettings = PrepSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    watch: WatchSettings = WatchSettings()
    label: LabelSettings = LabelSettings()
    # Scans to train on, in arrival order (files or directories). Empty: the simulated ones.
    scans: list[Path] = []


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError("--set", dotted, f"'{key}' is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.alpha=0.3"`` -> ``("train.alpha", 0.3)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected KEY=VALUE, e.g. train.alpha=0.3")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml_text(raw) if raw else ""
    except YamlInputError as exc:
        raise ConfigError("--set", key, exc.problem) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            "--set", key, f"value is not valid YAML ({exc.__class__.__name__})"
        ) from None
    return key.strip(), value


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {QUOTE.repr(err['input'])})"  # a glimpse, never a whole value
    return key, msg


def _known_keys(section: type[BaseModel] | None = None, prefix: str = "") -> Iterator[str]:
    """Every dotted key a run file may set, sections included."""
    for name, field in (section or Config).model_fields.items():
        yield prefix + name
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _known_keys(field.annotation, f"{prefix}{name}.")


def nearest_key(key: str) -> str | None:
    """The known key ``key`` was most likely meant to be: a close name in the same section,
    the same name in another section, or a close dotted key anywhere; None when none is."""
    known = list(_known_keys())
    section, _, name = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
    if close := difflib.get_close_matches(name, siblings, n=1):
        return f"{section}.{close[0]}" if section else close[0]
    if same_name := [k for k in known if k.rpartition(".")[2] == name]:
        return same_name[0]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    return close[0] if close else None


def _source_of(key: str, path: str | Path | None, overridden: Sequence[str]) -> str:
    """Where the setting at ``key`` came from, as the user wrote it: ``--set`` when an
    override set it (or a key inside it), else the run file, else the built-in defaults."""
    if any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.") for k in overridden):
        return "--set"
    return str(path) if path is not None else "the defaults"


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML run file (or the defaults), apply ``KEY=VALUE`` overrides, validate."""
    source = str(path) if path is not None else "the defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = read_yaml_file(Path(path))
        except OSError as exc:
            raise ConfigError(source, "<file>", exc.strerror or str(exc)) from None
        except YamlInputError as exc:
            where = "<file>" if exc.line is None else f"line {exc.line}"
            raise ConfigError(source, where, exc.problem) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "<file>"
            raise ConfigError(source, where, "not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(source, "<root>", "expected a mapping of sections")
        tree = loaded or {}
    overridden = []
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        overridden.append(key)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        key, msg = _first_error(exc)
        if msg == "unknown key" and (meant := nearest_key(key)):
            msg = f"unknown key; did you mean {meant}?"
        raise ConfigError(_source_of(key, path, overridden), key, msg) from None


# The settings that decide what the trainer learns: a checkpoint saves them and a resume must
# bring the same, or it would continue another run than the one saved (the batches, learning
# rates and replay of every later step follow from them). Every other setting of these
# sections may change on a resume: where and how fast the run goes, not what it computes.
LEARNING_SECTIONS = ("run", "prep", "model", "train")
RESUMABLE_SETTINGS = frozenset(
    {
        "run.name",
        "run.output_dir",
        "run.log_level",
        "model.precision",
        "model.channels_last",
        "model.compile",
        "train.device",
        "train.checkpoint_every_steps",
        "train.keep_checkpoints",
        "train.store.device",
        "train.store.prefetch",
    }
)


def learning_settings(config: Config) -> dict[str, Any]:
    """``config``'s settings that a resume must keep, as {dotted key: JSON value}."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif prefix not in RESUMABLE_SETTINGS:
            flat[prefix] = value

    dumped = config.model_dump(mode="json")
    for section in LEARNING_SECTIONS:
        walk(section, dumped[section])
    return flat


def check_same_learning_settings(saved: dict[str, Any], config: Config) -> None:
    """Refuse to resume with learning settings other than the checkpoint's (one line naming
    the first that differs and how many do). A setting only one side has (a checkpoint of
    another ptycl version) is not compared: nothing says what it was on the other side."""
    now = learning_settings(config)
    differing = [key for key in sorted(saved.keys() & now.keys()) if saved[key] != now[key]]
    if differing:
        key = differing[0]
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        raise ConfigError(
            "--resume",
            key,
            f"the run was trained with {saved[key]!r}, this config has {now[key]!r}"
            f"{more}: resume with the run's own config.yaml, or start a new run.output_dir",
        )


def dump_config(config: Config) -> str:
    """The resolved configuration as YAML (written beside every run's outputs)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
