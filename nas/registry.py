"""The one registry of blocks, keyed by ``(kind, name)``, and plugin discovery.

Plugins are ordinary Python packages that declare an entry point in the ``nas.plugins`` group pointing to a
module; importing that module runs its ``@register`` decorators. The built-in blocks in ``plugins/`` are
declared the same way in this project's ``pyproject.toml``. A search-space YAML may also list importable
module names under ``plugins:`` for local development.

:func:`load_plugins` is idempotent and cheap after the first call; it is called wherever a model is built
(the CLI, every trial, every Ray worker), so registry state never depends on which process imported what.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from .blocks import BlockConfig, Capabilities, capabilities_of

__all__ = [
    "KINDS",
    "Entry",
    "Registry",
    "RegistryError",
    "PluginError",
    "register",
    "get",
    "entries",
    "names",
    "default",
    "load_plugins",
    "REGISTRY",
]

KINDS = ("attention", "position", "norm", "ffn", "compression", "task")
ENTRY_POINT_GROUP = "nas.plugins"

T = TypeVar("T", bound=type)


class RegistryError(ValueError):
    """A registration or lookup that cannot be honoured (bad kind, duplicate key, unknown name)."""


class PluginError(ImportError):
    """A plugin module that could not be imported."""


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
        self._loaded_modules: set[str] = set()

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
            key = (kind, name)
            old = self._entries.get(key)
            if old is not None:
                if old.cls is cls:
                    return cls  # the same class seen again (module re-import): nothing to do
                raise RegistryError(
                    f"{kind} '{name}' is already registered by {old.provider} "
                    f"({old.cls.__module__}.{old.cls.__qualname__}); "
                    f"{cls.__module__}.{cls.__qualname__} cannot register it again. Pick another name."
                )
            if default and kind in self._defaults:
                raise RegistryError(
                    f"{kind} '{name}' ({cls.__module__}.{cls.__qualname__}) cannot be the default {kind}: "
                    f"'{self._defaults[kind]}' already is. Register it without default=True."
                )
            provider, version = _provider.get() or (cls.__module__.split(".")[0], "local")
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
            valid = self.names(kind)
            raise RegistryError(
                f"unknown {kind} '{name}'{did_you_mean(name, valid)} registered: {', '.join(valid) or '(none)'}"
            ) from None

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
        """Import every ``nas.plugins`` entry point (once) and the given module names (once each)."""
        if not self._loaded_entry_points:
            for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                dist = getattr(ep, "dist", None)
                provider = (dist.name, dist.version) if dist is not None else (ep.value.split(".")[0], "?")
                self._import(ep.value, provider, f"entry point '{ep.name}' of {provider[0]}")
            self._loaded_entry_points = True
        for module in modules:
            if module not in self._loaded_modules:
                self._import(module, (module.split(".")[0], "local"), f"plugin module '{module}'")
                self._loaded_modules.add(module)

    @staticmethod
    def _import(module: str, provider: tuple[str, str], what: str) -> None:
        token = _provider.set(provider)
        try:
            importlib.import_module(module)
        except RegistryError:
            raise
        except Exception as exc:  # ImportError, but also any error raised while the module runs
            raise PluginError(f"{what} failed to import: {type(exc).__name__}: {exc}") from exc
        finally:
            _provider.reset(token)

    @contextlib.contextmanager
    def scratch(self) -> Iterator["Registry"]:
        """Tests: register temporary blocks that are removed again on exit."""
        before, defaults = dict(self._entries), dict(self._defaults)
        try:
            yield self
        finally:
            self._entries, self._defaults = before, defaults


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


def build(kind: str, config: BlockConfig, *args: Any) -> Any:
    """Build the registered block for ``config`` (its ``type`` selects the class)."""
    return REGISTRY.get(kind, config.type).cls(config, *args)
