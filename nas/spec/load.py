"""Reading a search-space file: :func:`load_spec` reports every problem at once, each with its line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import registry
from . import yamlio
from .checks import check_semantics, partial_checks
from .errors import Problem, SpecError, problems_from_validation
from .schema import Spec, spec_model

__all__ = ["LoadedSpec", "load_spec", "spec_from_data"]


@dataclass
class LoadedSpec:
    spec: Spec
    locations: yamlio.Locations
    warnings: list[Problem] = field(default_factory=list)
    text: str = ""


def load_spec(path: str | Path, device: str | None = None) -> LoadedSpec:
    """Read, validate and check one search-space file; raise :class:`SpecError` listing every problem."""
    source = str(path)
    try:
        text = yamlio.read_text(path)
    except OSError as exc:
        raise SpecError(source, [Problem((), f"cannot read file: {exc.strerror}")]) from None
    except yamlio.YamlError as exc:
        raise SpecError(source, [Problem((), str(exc), exc.line)]) from None
    try:
        data, locs = yamlio.loads(text, source)
    except yamlio.YamlError as exc:
        raise SpecError(source, [Problem((), str(exc), exc.line)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, [Problem((), f"expected a mapping of sections, got {type(data).__name__}", 1)])

    plugins = data.get("plugins") or []
    if isinstance(plugins, list):
        for i, module in enumerate(plugins):
            try:
                registry.load_plugins([str(module)])
            except (registry.PluginError, registry.RegistryError) as exc:
                raise SpecError(source, [Problem(("plugins", i), str(exc), locs.line_of(("plugins", i)))]) from None
    registry.load_plugins()

    try:
        spec = spec_model().model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, data, locs)
        problems += partial_checks(data, {p.path for p in problems})
        for p in problems:
            p.line = p.line or locs.line_of(p.path)
        raise SpecError(source, sorted(problems, key=lambda p: p.line or 0)) from None

    problems, warnings = check_semantics(spec, device)
    for p in problems + warnings:
        p.line = locs.line_of(p.path)
    if problems:
        raise SpecError(source, problems)
    return LoadedSpec(spec, locs, warnings, text)


def spec_from_data(data: dict[str, Any], plugins: list[str] | tuple[str, ...] = ()) -> Spec:
    """A spec that was already validated elsewhere (sent to a Ray worker as JSON): load the plugins it names
    in this process, then validate it again here."""
    registry.load_plugins(plugins)
    return spec_model().model_validate(data)
