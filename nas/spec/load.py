"""Reading a search-space file: :func:`load_spec` reports every problem at once, each with its line."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import registry
from . import yamlio
from .checks import check_semantics, partial_checks
from .errors import Problem, SpecError, problems_from_validation
from .schema import Spec, spec_model

__all__ = ["LoadedSpec", "load_spec", "spec_from_data", "space_plugins"]


@dataclass
class LoadedSpec:
    spec: Spec
    locations: yamlio.Locations
    warnings: list[Problem] = field(default_factory=list)
    text: str = ""


def _read(path: str | Path) -> tuple[str, dict[str, Any], yamlio.Locations]:
    """The file's text, its top-level mapping and the line of every value; :class:`SpecError` if unreadable."""
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
    return text, data, locs


def space_plugins(path: str | Path) -> list[str]:
    """The module names a space file lists under ``plugins:``, read without validating the rest."""
    plugins = _read(path)[1].get("plugins") or []
    return [str(m) for m in plugins] if isinstance(plugins, list) else []


def load_spec(path: str | Path, device: str | None = None) -> LoadedSpec:
    """Read, validate and check one search-space file; raise :class:`SpecError` listing every problem."""
    source = str(path)
    text, data, locs = _read(path)

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
    in this process, then validate it again here.

    When it no longer validates because a plugin failed to import in this process (installed on the driver but
    broken on this worker), raises :class:`~nas.registry.PluginError` naming the plugin and its error, so the
    trial fails with that reason."""
    registry.load_plugins(plugins)
    try:
        return spec_model().model_validate(data)
    except ValidationError as exc:
        if not registry.broken():
            raise
        problems = problems_from_validation(exc, data, yamlio.Locations("<spec>"))
        where = f"{platform.node()} pid {os.getpid()}"
        why = "; ".join(f"{'.'.join(map(str, p.path))}: {p.message}" for p in problems)
        raise registry.PluginError(f"the space does not validate in this process ({where}): {why}") from None
