"""A plain registry (open_lth's rhythm): name -> implementation, with a ``get`` whose error lists what is
allowed. Priors, tasks, mask methods, trial kinds and analysis recipes each keep one; adding an
implementation is one ``register`` call (in lipsweep, or in a user's plugin module). An entry whose module
is heavy (torch) can be named by ``defer`` instead: its module is imported, and registers it, on first ``get``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from lipsweep.core.errors import ConfigError, allowed

T = TypeVar("T")


@dataclass(frozen=True)
class _Deferred:
    """A name whose entry ``module`` registers when it is imported, or (``module:ATTR``) holds as ``ATTR``:
    then the module need not know the registry, and the registry's module need not import it."""

    module: str


class Registry(Generic[T]):
    """Entries by name; ``field`` is the config field that names them (used in error messages)."""

    def __init__(self, field: str):
        self.field = field
        self._entries: dict[str, T | _Deferred] = {}

    def register(self, name: str, entry: T | None = None):
        """``register(name, entry)``, or ``@register(name)`` on a function or class."""
        def add(obj: T) -> T:
            found = self._entries.get(name, obj)
            if found is not obj and not isinstance(found, _Deferred):
                raise ConfigError(self.field, f"{name!r} is already registered; allowed: a new name (registered: "
                                              f"{allowed(self._entries)})")
            self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def defer(self, name: str, module: str) -> None:
        """Name an entry that ``module`` (a full module name, or ``module:ATTR``) registers or holds: listed at
        once, imported on first ``get``."""
        self._entries.setdefault(name, _Deferred(module))

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: object) -> T:
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(self.field, f"unknown value {name!r}; allowed: {allowed(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, _Deferred):
            module, _, attr = entry.module.partition(":")
            loaded = importlib.import_module(module)
            if attr and isinstance(self._entries.get(name), _Deferred):
                self._entries[name] = getattr(loaded, attr)
            if isinstance(self._entries.get(name), _Deferred):
                raise RuntimeError(f"{entry.module} did not register {self.field} {name!r}")
            entry = self._entries[name]
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """Every entry, deferred ones imported."""
        return [(name, self.get(name)) for name in list(self._entries)]


def load_plugin(ref: str) -> None:
    """Import a plugin (a module name, or a ``.py`` file path) whose import registers entries; a plugin that
    does not import (a syntax error, a name registered twice, an exception) is one line naming it.

    Ray workers are fresh processes: a sweep imports its plugins in every trial before reading its config."""
    try:
        _import_plugin(ref)
    except ConfigError as exc:
        if exc.field == "plugins":
            raise
        raise ConfigError("plugins", f"plugin {ref!r}: {exc}") from None
    except ImportError as exc:
        raise ConfigError("plugins", f"cannot import plugin {ref!r} ({exc}); allowed: a module name or a .py "
                                     "file path") from None
    except Exception as exc:  # noqa: BLE001 - any error of user code, as one line
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise ConfigError("plugins", f"plugin {ref!r} failed to import{where}: {type(exc).__name__}: {exc}") from None


def _import_plugin(ref: str) -> None:
    path = Path(ref)
    if path.suffix != ".py":
        importlib.import_module(ref)
        return
    if not path.is_file():
        raise ConfigError("plugins", f"no plugin file {ref!r}; allowed: a module name or a .py file path")
    name = f"lipsweep_plugin_{path.stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a failed import is not a loaded plugin
        raise


def load_plugins(refs: Iterable[str]) -> None:
    for ref in refs:
        load_plugin(ref)
