"""Problems in a search-space file, each located by its YAML path and line, and the mapping of pydantic's
validation errors onto them."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .. import registry
from ..registry import did_you_mean
from .schema import spec_model
from .yamlio import Locations

__all__ = ["Problem", "SpecError", "problems_from_validation", "YamlPath"]

YamlPath = tuple[str | int, ...]


@dataclass
class Problem:
    path: YamlPath
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        dotted = ".".join(str(p) for p in self.path) or "(top level)"
        return f"{where}: {dotted}: {self.message}"


class SpecError(ValueError):
    """A search-space file with problems; ``problems`` lists every one found, each with its line."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.format(source) for p in problems))


def _data_path(loc: tuple[str | int, ...], data: Any) -> YamlPath:
    """Map a pydantic error location onto the path in the data, skipping union-member tags.

    Pydantic puts the chosen union member into the location (``task.mqar.seq_len``, ``expansion.IntRange``,
    ``constrained-int``); those parts are not keys of the file. Field names in our models are lower-case
    identifiers, so anything else that is not a key of the data is a tag.
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part != node.get("type") and _is_field_name(part):
            path.append(part)  # a missing key: name it even though it is not in the data
            node = None
    return tuple(path)


def _is_field_name(part: str) -> bool:
    return part.isidentifier() and part.islower() and part not in {"int", "float", "str", "bool", "list", "dict"}


_TYPE_MISMATCH = {"int_type", "int_parsing", "float_type", "float_parsing", "list_type", "model_type", "dict_type",
                  "string_type", "bool_type", "bool_parsing", "model_attributes_type", "is_instance_of"}


def problems_from_validation(exc: ValidationError, data: Any, locs: Locations) -> list[Problem]:
    by_path: dict[YamlPath, list[tuple[str, str]]] = {}
    for err in exc.errors(include_url=False):
        path = _data_path(err["loc"], data)
        entry = (err["type"], _message(err, path, data))
        if entry not in by_path.setdefault(path, []):
            by_path[path].append(entry)
    problems = []
    for path, errs in by_path.items():
        # One value that matched no member of a union gets one error per member. The members whose shape it
        # has (a mapping for a range, a list for choices) explain it best; the rest only say "wrong type".
        relevant = [m for t, m in errs if t not in _TYPE_MISMATCH] or [m for _, m in errs]
        msg = relevant[0] if len(relevant) == 1 else "invalid value; expected one of: " + " | ".join(relevant)
        problems.append(Problem(path, msg, locs.line_of(path)))
    return problems


def _message(err: ErrorDetails, path: YamlPath, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        model = _model_at(spec_model(), path[:-1], data)
        valid = [f for f in model.model_fields if f != "type"] if model else []
        hint = f"{did_you_mean(key, valid)} valid: {', '.join(valid)}" if valid else ""
        return f"unknown key '{key}'{hint}"
    # A `type` that names no registered block (a wrong value of any other Literal field is not that).
    names_a_block = bool(path) and (path[0] == "task" or (path[0] == "space" and len(path) >= 2))
    bad_type = kind == "union_tag_invalid" or (kind == "literal_error" and path[-1:] == ("type",))
    if bad_type and names_a_block:
        block_kind = str(path[1]) if path[0] == "space" else "task"
        tag = err["input"] if kind == "literal_error" else err.get("ctx", {}).get("tag")
        return registry.unknown(block_kind, str(tag))
    if kind == "union_tag_not_found":
        block_kind = str(path[1]) if path and path[0] == "space" and len(path) > 1 else "task"
        return f"missing 'type'; registered {block_kind} types: {', '.join(registry.names(block_kind))}"
    return err["msg"]


def _model_at(model: Any, path: YamlPath, data: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``path`` in ``data``, if one does."""
    tp, node = model, data
    for part in path:
        tp = _unwrap(tp, node)
        if isinstance(part, int):
            if get_origin(tp) is not list or not isinstance(node, list) or not 0 <= part < len(node):
                return None
            tp, node = get_args(tp)[0], node[part]
        else:
            if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
                return None
            tp, node = tp.model_fields[part].annotation, node.get(part) if isinstance(node, dict) else None
    tp = _unwrap(tp, node)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip ``Annotated`` and pick the union member that ``node`` (by its ``type`` tag) belongs to."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
            tp = _pick_member(members, node)
        else:
            return tp


def _pick_member(members: list[type[BaseModel]], node: Any) -> Any:
    tag = node.get("type") if isinstance(node, dict) else None
    for m in members:
        field_type = m.model_fields.get("type")
        if field_type is not None and get_args(field_type.annotation) == (tag,):
            return m
    return members[0] if len(members) == 1 else None
