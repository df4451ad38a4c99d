"""A plain registry (open_lth's rhythm): name -> implementation, with a ``get`` whose error lists what is
allowed. Priors, tasks, mask methods, trial kinds and analysis recipes each keep one; adding an
implementation is one ``register`` call (in lipsweep, or in a user's plugin module)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from .errors import ConfigError, allowed

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; ``field`` is the config field that names them (used in error messages)."""

    def __init__(self, field: str):
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """``register(name, entry)``, or ``@register(name)`` on a function or class."""
        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.field} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add(entry) if entry is not None else add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: object) -> T:
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(self.field, f"unknown value {name!r}; allowed: {allowed(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())


def load_plugin(ref: str) -> None:
    """Import a plugin (a module name, or a ``.py`` file path) whose import registers entries.

    Ray workers are fresh processes: a sweep imports its plugins in every trial before reading its config."""
    path = Path(ref)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError("plugins", f"no plugin file {ref!r}; allowed: a module name or a .py file path")
        name = f"lipsweep_plugin_{path.stem}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path.resolve())
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return
    try:
        importlib.import_module(ref)
    except ImportError as exc:
        raise ConfigError("plugins", f"cannot import plugin {ref!r} ({exc}); allowed: a module name or a .py "
                                     "file path") from None


def load_plugins(refs: Iterable[str]) -> None:
    for ref in refs:
        load_plugin(ref)
