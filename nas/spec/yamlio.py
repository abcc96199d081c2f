"""Safe YAML loading that remembers where every value came from.

Differences from ``yaml.safe_load``, each one a trap for search-space files:

* duplicate keys are an error (PyYAML silently keeps the last one);
* ``1e-3`` is a float (YAML 1.2), not the string PyYAML's YAML 1.1 resolver makes of it;
* only ``true``/``false`` are booleans (``no``, ``on``, ``off`` stay strings, as in YAML 1.2);
* tags that construct Python objects are rejected (safe loader);
* hostile input is bounded before and while parsing (:class:`Limits`): file size, UTF-8, nesting depth and the
  number of values after alias expansion (a "billion laughs" file is refused in milliseconds, not minutes).

:func:`load` returns the data and a :class:`Locations` map from paths such as ``("space", "attention", 0,
"window")`` to line numbers, used to point every validation error at its line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load", "loads", "read_text", "Locations", "YamlError", "Limits"]

Path_ = tuple[str | int | float, ...]  # YAML keys may be numbers too


class YamlError(ValueError):
    """The file is not well-formed YAML, or uses a construct we reject. Carries the line."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and booleans."""


# Replace the YAML 1.1 bool and float resolvers with YAML 1.2 core-schema ones.
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


_MAP_TAG, _SEQ_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


@dataclass(frozen=True)
class Limits:
    """Bounds on a search-space file. A real one is a few kB, a few levels deep and a few hundred values."""

    max_bytes: int = 4 * 2**20  # NAS_MAX_SPEC_BYTES overrides
    max_depth: int = 64  # nested mappings and lists
    max_values: int = 50_000  # values built, every alias expanded

    @classmethod
    def from_env(cls) -> "Limits":
        raw = os.environ.get("NAS_MAX_SPEC_BYTES")
        return cls(max_bytes=int(raw)) if raw and raw.isdigit() else cls()


def read_text(path: str | Path, limits: Limits | None = None) -> str:
    """The text of a YAML file, refused (:class:`YamlError`) when it is larger than ``limits.max_bytes`` (checked
    before reading) or not UTF-8 (naming the line and column of the first bad byte)."""
    limits = limits or Limits.from_env()
    size = Path(path).stat().st_size
    if size > limits.max_bytes:
        raise YamlError(f"the file is {size / 2**20:.1f} MiB; a search space may be at most "
                        f"{limits.max_bytes / 2**20:.1f} MiB (set NAS_MAX_SPEC_BYTES to raise the limit)")
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlError(f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column {column}; save the file as "
                        "UTF-8", line) from None


def _check_shape(text: str, limits: Limits) -> None:
    """Nesting depth from the event stream (an iterative parser: no recursion, whatever the depth)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > limits.max_depth:
                line = event.start_mark.line + 1 if event.start_mark is not None else None
                raise YamlError(f"nested more than {limits.max_depth} levels deep", line)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _Budget:
    """Counts the values :func:`_build` makes, aliases expanded, against ``limits.max_values``."""

    def __init__(self, limits: Limits):
        self.limits, self.left = limits, limits.max_values

    def spend(self, node: yaml.Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise YamlError(f"more than {self.limits.max_values} values once aliases are expanded (an alias bomb?); "
                            "a search space needs far fewer", node.start_mark.line + 1)


@dataclass
class Locations:
    """Line numbers (1-based) of the values in a loaded file, by path."""

    source: str
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of the deepest existing prefix of ``path``."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                return line
        return None


def load(path: str | Path, limits: Limits | None = None) -> tuple[Any, Locations]:
    """Load one YAML document from ``path``. Raises :class:`YamlError` with the line of the problem."""
    return loads(read_text(path, limits), source=str(path), limits=limits)


def loads(text: str, source: str = "<string>", limits: Limits | None = None) -> tuple[Any, Locations]:
    limits = limits or Limits.from_env()
    if len(text) > limits.max_bytes:
        raise YamlError(f"the text is {len(text)} characters; a search space may be at most {limits.max_bytes} bytes")
    locs = Locations(source)
    loader = _Loader(text)
    try:
        _check_shape(text, limits)
        node = loader.get_single_node()
        if node is None:
            return None, locs
        return _build(loader, node, (), locs, _Budget(limits)), locs
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlError(f"{exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)) from None
    finally:
        loader.dispose()


def _build(loader: _Loader, node: yaml.Node, path: Path_, locs: Locations, budget: _Budget,
           line: int | None = None) -> Any:
    """Build ``node``; ``line`` is where its key is (a block mapping value starts on the line after its key)."""
    budget.spend(node)
    locs.lines[path] = line if line is not None else node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in (_MAP_TAG, _SEQ_TAG):
        # _build assembles collections itself, so a tag on one (!!python/object:..., !!set) would be ignored
        raise YamlError(f"unsupported YAML value: tag '{node.tag}' is not allowed", node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                raise YamlError("mapping keys must be plain scalars", key_node.start_mark.line + 1)
            if key in out:
                first = locs.lines.get(path + (key,))
                raise YamlError(
                    f"duplicate key '{key}' (first defined on line {first})", key_node.start_mark.line + 1
                )
            out[key] = _build(loader, value_node, path + (key,), locs, budget, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), locs, budget) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise YamlError(f"unsupported YAML value: {exc.problem}", node.start_mark.line + 1) from None
