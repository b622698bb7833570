"""YAML as a run file is read: safe, bounded, and without the forms a run file never needs.

A run file is read by a person's command, but it may come from anywhere (a shared directory,
a job template). PyYAML's safe loader builds no objects but plain ones; it still lets a small
file stand for a huge value through aliases ("billion laughs": nine anchors of ten aliases
each are a billion strings, which validation or a message quoting the value would then walk),
recurses once per nesting level, and keeps the last of two equal keys without a word. Here:

- a document is at most ``MAX_CONFIG_BYTES`` (``-c /dev/zero`` never ends otherwise), and
  text (UTF-8);
- its values, aliases expanded, number at most ``MAX_CONFIG_VALUES``, counted on the composed
  node graph before anything is built from it;
- a key given twice in one mapping is an error naming its line;
- nesting too deep for the parser is an error, not a RecursionError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1 << 20  # a run file is a few kB
MAX_CONFIG_VALUES = 100_000  # scalars, lists and mappings, aliases expanded
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlInputError(ValueError):
    """Why a document cannot be a run file, in a few words; ``line`` where it is known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        self.problem, self.line = problem, line
        super().__init__(problem)


class _StrictLoader(yaml.SafeLoader):
    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise YamlInputError(
                f"aliases expand it to more than {MAX_CONFIG_VALUES} values; not a run file"
            )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise YamlInputError(
                    f"key {str(key)[:80]!r} given twice in one mapping",
                    key_node.start_mark.line + 1,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values under ``node`` with every alias expanded; each shared node is counted once
    (its size remembered), so a bomb is measured without being expanded."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, sizes)
            if total > MAX_CONFIG_VALUES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded_size(key, sizes) + _expanded_size(value, sizes)
            if total > MAX_CONFIG_VALUES:
                break
    sizes[id(node)] = total
    return total


def load_yaml_text(text: str) -> Any:
    """One YAML document, parsed strictly (see the module docstring)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise YamlInputError("nested too deep to be a run file") from None


def read_yaml_file(path: Path) -> Any:
    """A run file's YAML, read at most ``MAX_CONFIG_BYTES`` far. Raises OSError as ``open``
    does, YamlInputError for a file that cannot be a run file, yaml.YAMLError for bad YAML."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise YamlInputError(f"more than {MAX_CONFIG_BYTES} bytes; not a run file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlInputError("not a text file (UTF-8); a run file is YAML") from None
    if "\x00" in text:
        raise YamlInputError("holds NUL bytes; a run file is YAML text")
    return load_yaml_text(text)
