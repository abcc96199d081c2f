"""Safe YAML loading that remembers where every value came from.

Differences from ``yaml.safe_load``, each one a trap for search-space files:

* duplicate keys are an error (PyYAML silently keeps the last one);
* ``1e-3`` is a float (YAML 1.2), not the string PyYAML's YAML 1.1 resolver makes of it;
* only ``true``/``false`` are booleans (``no``, ``on``, ``off`` stay strings, as in YAML 1.2);
* tags that construct Python objects are rejected (safe loader).

:func:`load` returns the data and a :class:`Locations` map from paths such as ``("space", "attention", 0,
"window")`` to line numbers, used to point every validation error at its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load", "Locations", "YamlError"]

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


def load(path: str | Path) -> tuple[Any, Locations]:
    """Load one YAML document from ``path``. Raises :class:`YamlError` with the line of the problem."""
    text = Path(path).read_text(encoding="utf-8")
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> tuple[Any, Locations]:
    locs = Locations(source)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, locs
        return _build(loader, node, (), locs), locs
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlError(f"{exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)) from None
    finally:
        loader.dispose()


def _build(loader: _Loader, node: yaml.Node, path: Path_, locs: Locations, line: int | None = None) -> Any:
    """Build ``node``; ``line`` is where its key is (a block mapping value starts on the line after its key)."""
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
            out[key] = _build(loader, value_node, path + (key,), locs, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), locs) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise YamlError(f"unsupported YAML value: {exc.problem}", node.start_mark.line + 1) from None
