"""The one registry of blocks, keyed by ``(kind, name)``, and plugin discovery.

Plugins are ordinary Python packages that declare an entry point in the ``nas.plugins`` group pointing to a
module; importing that module runs its ``@register`` decorators. The built-in blocks in ``plugins/`` are
declared the same way in this project's ``pyproject.toml``. A search-space YAML may also list importable
module names under ``plugins:`` for local development.

:func:`load_plugins` is idempotent and cheap after the first call; it is called wherever a model is built
(the CLI, every trial, every Ray worker), so registry state never depends on which process imported what.

What it promises, whatever is installed:

* **Order.** The built-ins (the entry points of the ``nas-transformers`` distribution) load first, on purpose,
  then every other plugin by distribution name and entry-point name. ``importlib.metadata`` promises no order,
  and sorting by entry-point name alone would let a package's spelling decide who registers first.
* **Built-in names stay built-in.** A plugin that registers a name a built-in holds is refused, even when it is
  imported by hand before :func:`load_plugins` (the built-ins are then loaded first). Two plugins claiming one
  name: the first in the order above keeps it, and the error names both packages.
* **Isolation.** A plugin that fails to import (a missing dependency, an error at import, a refused name) is
  recorded as a :class:`BrokenPlugin` with its exception, the file and line that failed and its traceback;
  whatever it had registered is taken out again, and everything else goes on without it. :func:`broken`
  lists them; a lookup of a block that one of them declares says so. With ``NAS_STRICT_PLUGINS=1`` (``nas
  --strict``) any broken plugin makes :func:`load_plugins` raise :class:`PluginError` instead.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

from .declared import BlockConfig, Capabilities, capabilities_of
from .names import CORE_DISTRIBUTION, ENTRY_POINT_GROUP, KINDS, STRICT_ENV

__all__ = [
    "KINDS",
    "Entry",
    "Registry",
    "RegistryError",
    "PluginError",
    "BrokenPlugin",
    "CORE_DISTRIBUTION",
    "STRICT_ENV",
    "broken",
    "strict",
    "unknown",
    "register",
    "get",
    "entries",
    "names",
    "default",
    "load_plugins",
    "REGISTRY",
]


T = TypeVar("T", bound=type)


class RegistryError(ValueError):
    """A registration or lookup that cannot be honoured (bad kind, duplicate key, unknown name)."""


class PluginError(ImportError):
    """A plugin module that could not be imported (or, in strict mode, any broken plugin)."""


def strict() -> bool:
    """Whether broken plugins are errors (``NAS_STRICT_PLUGINS`` set to anything but "" or "0")."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import, as recorded by :func:`load_plugins`."""

    name: str  # the entry point's name, or the module's for a space's `plugins:` module
    module: str  # the module it names
    provider: str  # its distribution (or the module's top-level package)
    version: str
    error: str  # "ModuleNotFoundError: No module named 'einops'": the exception, first line
    location: str  # "path/to/file.py:7", the line of the plugin's own code that failed ("" if unknown)
    traceback: str  # the full traceback, for `--verbose`
    declares: tuple[tuple[str, str], ...] = ()  # (kind, name) its source registers, read without running it
    entry_point: bool = True  # False: a module named by a space's `plugins:` (or load_plugins(modules))

    @property
    def label(self) -> str:
        """``plugin 'talking-heads' of nas-talking-heads 0.1.0 (module nas_talking_heads)``, or ``plugin module
        'my_module'`` for a space's module."""
        if not self.entry_point:
            return f"plugin module '{self.module}'"
        return f"plugin '{self.name}' of {self.provider} {self.version} (module {self.module})"

    def describe(self) -> str:
        """One line: which plugin, its error, and where it failed."""
        at = f" at {self.location}" if self.location else ""
        return f"{self.label} failed to import: {self.error}{at}"


@dataclass(frozen=True)
class Entry:
    """One registered block and what is known about it without building it."""

    kind: str
    name: str
    cls: type[Any]  # the block class; its class-level declarations are read through the properties below
    provider: str  # the distribution (or module) that registered it
    version: str

    @property
    def config(self) -> type[BlockConfig]:
        return self.cls.Config

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_of(self.kind, self.cls)

    @property
    def summary(self) -> str:
        """The first paragraph of the block's docstring, on one line."""
        doc = (self.cls.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


_provider: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("nas_provider", default=None)


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when a close match exists, else ``""``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry:
    """Blocks by ``(kind, name)``. Registering a taken key with a different class is an error."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._defaults: dict[str, str] = {}  # kind -> the name registered with default=True
        self._loaded_entry_points = False
        self._loaded_core = False
        self._loaded_modules: set[str] = set()
        self._broken: dict[str, BrokenPlugin] = {}  # module -> why it failed

    # -- registration -------------------------------------------------------------------------------
    def register(self, kind: str, name: str, default: bool = False) -> Callable[[T], T]:
        """Class decorator: register a block under ``(kind, name)``.

        The class must define ``Config``, a :class:`~nas.blocks.BlockConfig` subclass whose ``type`` field
        is ``Literal[name]``. ``default=True`` makes it the block a search space gets for a kind it does not
        list (at most one per kind): that is how the core fills defaults without naming any block.
        """
        if kind not in KINDS:
            raise RegistryError(f"unknown kind '{kind}'{did_you_mean(kind, KINDS)} kinds: {', '.join(KINDS)}")
        if not name.isidentifier():
            raise RegistryError(f"block name '{name}' must be a Python identifier (letters, digits, _)")

        def decorator(cls: T) -> T:
            self._check_config(kind, name, cls)
            provider, version = _provider.get() or _provider_of(cls.__module__)
            if provider != CORE_DISTRIBUTION:
                self._load_core()  # a built-in's name can never be taken, whatever was imported first
            key = (kind, name)
            old = self._entries.get(key)
            if old is not None:
                if old.cls is cls:
                    return cls  # the same class seen again (module re-import): nothing to do
                raise RegistryError(_clash(kind, name, old, provider, version, cls))
            if default and kind in self._defaults:
                raise RegistryError(
                    f"{kind} '{name}' ({cls.__module__}.{cls.__qualname__}) cannot be the default {kind}: "
                    f"'{self._defaults[kind]}' already is. Register it without default=True."
                )
            self._entries[key] = Entry(kind, name, cls, provider, version)
            if default:
                self._defaults[kind] = name
            return cls

        return decorator

    @staticmethod
    def _check_config(kind: str, name: str, cls: type) -> None:
        where = f"{kind} '{name}' ({cls.__module__}.{cls.__qualname__})"
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, BlockConfig)):
            raise RegistryError(f"{where} needs a nested `Config` class derived from nas.BlockConfig")
        type_field = config.model_fields.get("type")
        if type_field is None or get_args(type_field.annotation) != (name,):
            raise RegistryError(f'{where}: Config needs `type: Literal["{name}"] = "{name}"`')

    # -- lookup --------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[(kind, name)]
        except KeyError:
            raise RegistryError(self.unknown(kind, name)) from None

    def unknown(self, kind: str, name: str) -> str:
        """Why ``(kind, name)`` is not registered: the broken plugin that declares it, if one does; else the
        registered names, and the broken plugins that declare nothing readable (they may provide it)."""
        declaring = [b for b in self._broken.values() if (kind, name) in b.declares]
        if declaring:
            return f"unknown {kind} '{name}': it is provided by " + "; ".join(
                f"{b.label}, which failed to import: {b.error}" + (f" at {b.location}" if b.location else "")
                for b in declaring)
        valid = self.names(kind)
        text = f"unknown {kind} '{name}'{did_you_mean(name, valid)} registered: {', '.join(valid) or '(none)'}"
        if not (self._loaded_entry_points or self._entries):
            text += " (no plugins loaded yet: call nas.load_plugins() first)"
        unread = [b for b in self._broken.values() if not b.declares]
        if unread:
            text += "; it may be provided by a plugin that failed to import: " + "; ".join(
                b.describe() for b in unread)
        return text

    def broken(self) -> list[BrokenPlugin]:
        """The plugins that failed to import in this process, in load order."""
        return list(self._broken.values())

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[Entry]:
        return [e for (k, _), e in sorted(self._entries.items()) if kind is None or k == kind]

    def default(self, kind: str) -> str:
        """The name of the kind's default block (registered with ``default=True``); loads the entry points
        first, since the defaults come from the installed plugins."""
        self.load_plugins()
        try:
            return self._defaults[kind]
        except KeyError:
            raise RegistryError(f"no default {kind} block is registered (one registers with `@register('{kind}', "
                                "name, default=True)`); is the `nas-transformers` distribution installed?") from None

    # -- discovery -----------------------------------------------------------------------------------
    def load_plugins(self, modules: Iterable[str] = ()) -> None:
        """Import every ``nas.plugins`` entry point (once), the built-ins first, then the given module names
        (once each).

        An entry point that fails to import is recorded (:meth:`broken`) and skipped. A listed module that
        fails is recorded too and raises :class:`PluginError`: whoever named it needs it. In strict mode
        (:func:`strict`) any broken plugin raises :class:`PluginError`.
        """
        if not self._loaded_entry_points:
            self._load_core()
            for ep in sorted(_entry_points(), key=_load_order):
                if _distribution(ep)[0] != CORE_DISTRIBUTION:
                    self._import(ep.value, _distribution(ep), ep.name)
            self._loaded_entry_points = True
        for module in modules:
            if module not in self._loaded_modules:
                self._loaded_modules.add(module)
                self._import(module, _provider_of(module), module, entry_point=False)
            if module in self._broken:
                raise PluginError(self._broken[module].describe())
        if self._broken and strict():
            raise PluginError(f"{len(self._broken)} plugin(s) failed to import ({STRICT_ENV} is set): "
                              + "; ".join(b.describe() for b in self._broken.values()))

    def _load_core(self) -> None:
        """The built-ins' entry points, before anything else registers."""
        if self._loaded_core or self._loaded_entry_points:
            return
        self._loaded_core = True
        for ep in sorted(_entry_points(), key=_load_order):
            if _distribution(ep)[0] == CORE_DISTRIBUTION:
                self._import(ep.value, _distribution(ep), ep.name)

    def _import(self, module: str, provider: tuple[str, str], name: str, entry_point: bool = True) -> None:
        """Import one plugin module; on failure take out what it registered and record why."""
        token = _provider.set(provider)
        before_entries, before_defaults = set(self._entries), dict(self._defaults)
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, but also any error raised while the module runs
            added = [k for k in set(self._entries) - before_entries if self._entries[k].provider == provider[0]]
            for key in added:
                del self._entries[key]
            self._defaults = {k: v for k, v in self._defaults.items()
                              if k in before_defaults or (k, v) not in added}
            declares = tuple(sorted(set(added) | set(_declared_blocks(module))))
            self._broken[module] = BrokenPlugin(
                name, module, provider[0], provider[1], _first_line(exc), _failed_at(exc, module),
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), declares, entry_point)
        finally:
            _provider.reset(token)

    @contextlib.contextmanager
    def scratch(self) -> Iterator["Registry"]:
        """Tests: register temporary blocks that are removed again on exit."""
        before, defaults, broken = dict(self._entries), dict(self._defaults), dict(self._broken)
        flags, modules = (self._loaded_entry_points, self._loaded_core), set(self._loaded_modules)
        try:
            yield self
        finally:
            self._entries, self._defaults, self._broken = before, defaults, broken
            (self._loaded_entry_points, self._loaded_core), self._loaded_modules = flags, modules


# --- discovery helpers ----------------------------------------------------------------------------------
def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else (ep.value.split(".")[0], "?")


def _load_order(ep: importlib.metadata.EntryPoint) -> tuple[bool, str, str]:
    """Built-ins first, then by distribution, then by entry-point name: never by spelling alone."""
    dist = _distribution(ep)[0]
    return (dist != CORE_DISTRIBUTION, dist.lower(), ep.name)


def _provider_of(module: str) -> tuple[str, str]:
    """The installed distribution that holds ``module`` (a plugin imported by hand, or a space's module), else
    its top-level package with version ``local``."""
    top = module.split(".")[0]
    dists = _packages_distributions().get(top, [])
    if dists:
        try:
            return dists[0], importlib.metadata.version(dists[0])
        except importlib.metadata.PackageNotFoundError:
            pass
    return top, "local"


_PACKAGES: dict[str, list[str]] | None = None


def _packages_distributions() -> dict[str, list[str]]:
    global _PACKAGES
    if _PACKAGES is None:
        _PACKAGES = dict(importlib.metadata.packages_distributions())
    return _PACKAGES


def _clash(kind: str, name: str, old: Entry, provider: str, version: str, cls: type) -> str:
    new_where = f"{cls.__module__}.{cls.__qualname__}"
    old_where = f"{old.cls.__module__}.{old.cls.__qualname__}"
    if old.provider == CORE_DISTRIBUTION:
        return (f"{kind} '{name}' is already registered by {CORE_DISTRIBUTION}, as a built-in ({old_where}); "
                f"{provider} {version} ({new_where}) cannot take it. Pick another name.")
    if old.provider == provider:
        return (f"{kind} '{name}' is already registered by {provider} ({old_where}); {new_where} cannot register "
                "it again. Pick another name.")
    claims = sorted([(old.provider, old.version, old_where), (provider, version, new_where)])
    both = " and ".join(f"{p} {v} ({w})" for p, v, w in claims)
    return (f"{kind} '{name}' is claimed by two plugins, {both}; {old.provider} loaded first and keeps it. "
            f"Rename one of the blocks, or uninstall one of the packages.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _plugin_files(module: str) -> list[Path]:
    """The source files of the plugin's top-level package (or module), located without importing it."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        files = []
        for root in spec.submodule_search_locations:
            files += sorted(Path(root).rglob("*.py"))[:200]
        return files
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []


def _failed_at(exc: BaseException, module: str) -> str:
    """``file:line`` of the plugin's own statement that failed (the import of a missing dependency, the
    decorator that was refused); else the innermost frame outside the import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_shown(exc.filename)}:{exc.lineno}"
    machinery = {__file__, importlib.__file__}
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and f.filename not in machinery]
    own = {str(p.resolve()) for p in _plugin_files(module)}
    mine = [f for f in frames if str(Path(f.filename).resolve()) in own]
    chosen = mine[-1] if mine else (frames[-1] if frames else None)
    return f"{_shown(chosen.filename)}:{chosen.lineno}" if chosen is not None else ""


def _shown(filename: str) -> str:
    """A path relative to the working directory when it lies under it."""
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename


def _declared_blocks(module: str) -> list[tuple[str, str]]:
    """``(kind, name)`` of every ``register("kind", "name")`` in the plugin's source, read without running it:
    what a plugin that failed to import would have provided."""
    found = []
    for path in _plugin_files(module):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            kind, name = node.args[0], node.args[1]
            if (called == "register" and isinstance(kind, ast.Constant) and isinstance(name, ast.Constant)
                    and kind.value in KINDS and isinstance(name.value, str)):
                found.append((kind.value, name.value))
    return found


REGISTRY = Registry()


def register(kind: str, name: str, default: bool = False) -> Callable[[T], T]:
    """Register a block class under ``(kind, name)`` in the global registry. See :meth:`Registry.register`."""
    return REGISTRY.register(kind, name, default)


def get(kind: str, name: str) -> Entry:
    return REGISTRY.get(kind, name)


def entries(kind: str | None = None) -> list[Entry]:
    return REGISTRY.entries(kind)


def names(kind: str) -> list[str]:
    return REGISTRY.names(kind)


def default(kind: str) -> str:
    return REGISTRY.default(kind)


def load_plugins(modules: Iterable[str] = ()) -> None:
    REGISTRY.load_plugins(modules)


def unknown(kind: str, name: str) -> str:
    """The message for a block that is not registered (see :meth:`Registry.unknown`)."""
    return REGISTRY.unknown(kind, name)


def broken() -> list[BrokenPlugin]:
    """The plugins that failed to import in this process (see :meth:`Registry.broken`)."""
    return REGISTRY.broken()


def build(kind: str, config: BlockConfig, *args: Any) -> Any:
    """Build the registered block for ``config`` (its ``type`` selects the class)."""
    return REGISTRY.get(kind, config.type).cls(config, *args)
