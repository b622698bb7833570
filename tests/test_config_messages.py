"""An unknown key is named with where it came from (the run file, or --set) and the known key
it most likely meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptycl.config import load_config, nearest_key
from ptycl.errors import ConfigError


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("train.stratgy", "train.strategy"),  # a close name in the same section
        ("train.capacity_samples", "train.store.capacity_samples"),  # the right name, wrong section
        ("train.store.capacty_bytes", "train.store.capacity_bytes"),
        ("trian", "train"),  # a section
        ("train.nope", None),  # nothing close: no guess
    ],
)
def test_the_nearest_known_key(typo: str, meant: str | None) -> None:
    assert nearest_key(typo) == meant


def test_an_unknown_key_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.01\n  kep_checkpoints: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: train.kep_checkpoints: unknown key; did you mean train.keep_checkpoints?"
    )


def test_an_unknown_or_bad_key_from_the_command_line_names_set(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.01\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lr=0.02", "model.widht=8"])
    assert str(err.value) == "--set: model.widht: unknown key; did you mean model.width?"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.nope=1"])
    assert str(err.value) == "--set: train.nope: unknown key"
    # a value the file gave but --set broke is the command line's doing too
    with pytest.raises(ConfigError, match=r"^--set: train.lr: "):
        load_config(path, ["train.lr=-1"])
    path.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train.lr: "):
        load_config(path, ["train.alpha=0.1"])
