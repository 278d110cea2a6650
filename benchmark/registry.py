"""One generic name -> object registry for encoders, datasets and evaluators.

Built-ins register with a decorator (or :meth:`Registry.add`); installed plugins declare entry
points in the groups ``medtransfer.encoders``, ``medtransfer.datasets`` and
``medtransfer.evaluators``. Built-in modules and plugins are loaded lazily, on the first lookup,
so a broken plugin can never break ``--help``: its error is logged and kept in
:attr:`Registry.plugin_errors`.
"""
from __future__ import annotations

import difflib
import importlib
import logging
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(Exception):
    """Base class of registry errors (messages are meant for end users)."""


class UnknownNameError(RegistryError, KeyError):
    """A name that is not registered; the message carries close-match suggestions."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        listing = f" Known {kind}s: {', '.join(known[:40])}{' ...' if len(known) > 40 else ''}."
        super().__init__(f"unknown {kind} '{name}'.{hint}{listing}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DuplicateNameError(RegistryError):
    """Two registrations under one name (or alias)."""


class Registry(Generic[T]):
    """Maps lowercase names (and aliases) to registered objects of one kind.

    Args:
        kind: human name of the kind ("encoder"), used in messages.
        entry_point_group: the entry-point group that installed plugins use.
        builtin_modules: modules imported on first lookup; importing them registers the built-ins.
        validate: optional check applied to every registered object (raise TypeError if wrong).
    """

    def __init__(self, kind: str, entry_point_group: str, builtin_modules: tuple[str, ...] = (),
                 validate: Callable[[object], None] | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtin_modules = builtin_modules
        self._validate = validate
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._loaded = False
        self._loading = False
        self.plugin_errors: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), origin: str = "builtin") -> T:
        """Register ``obj`` under ``name`` (and ``aliases``); duplicates are an error."""
        key = self._normalise(name)
        aliases = tuple(aliases) or tuple(getattr(obj, "aliases", ()) or ())
        if self._validate is not None:
            self._validate(obj)
        for candidate in (key, *map(self._normalise, aliases)):
            if candidate in self._items or candidate in self._aliases:
                owner = self._aliases.get(candidate, candidate)
                raise DuplicateNameError(
                    f"{self.kind} name '{candidate}' is already registered (by {self._origin.get(owner, '?')}); "
                    f"choose another name for the one from {origin}")
        self._items[key] = obj
        self._origin[key] = origin
        for alias in aliases:
            self._aliases[self._normalise(alias)] = key
        return obj

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add` for built-ins."""
        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj
        return decorator

    def remove(self, name: str) -> None:
        """Unregister a name and its aliases (used by local registries and tests)."""
        key = self.resolve(name)
        del self._items[key]
        self._origin.pop(key, None)
        for alias in [a for a, target in self._aliases.items() if target == key]:
            del self._aliases[alias]

    # -- lookup ---------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` or an alias; raises :class:`UnknownNameError`."""
        self.ensure_loaded()
        key = self._normalise(name)
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        known = sorted(self._items) + sorted(self._aliases)
        suggestions = difflib.get_close_matches(key, known, n=5, cutoff=0.5)
        raise UnknownNameError(self.kind, name, suggestions, sorted(self._items))

    def get(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        self.ensure_loaded()
        return sorted(self._items)

    def aliases_of(self, name: str) -> list[str]:
        key = self.resolve(name)
        return sorted(a for a, target in self._aliases.items() if target == key)

    def origin(self, name: str) -> str:
        return self._origin[self.resolve(name)]

    def items(self) -> Iterator[tuple[str, T]]:
        self.ensure_loaded()
        return iter(sorted(self._items.items()))

    # -- lazy loading ---------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        """Import the built-in modules and load entry-point plugins, once."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for module in self._builtin_modules:
                importlib.import_module(module)
            self._load_plugins()
            self._loaded = True
        finally:
            self._loading = False

    def _load_plugins(self) -> None:
        for entry_point in metadata.entry_points(group=self.entry_point_group):
            origin = f"plugin {entry_point.value} ({entry_point.dist.name if entry_point.dist else '?'})"
            try:
                loaded = entry_point.load()
                objects = loaded() if callable(loaded) and not self._accepts(loaded) else loaded
                if not isinstance(objects, (list, tuple)):
                    objects = [objects]
                for index, obj in enumerate(objects):
                    name = getattr(obj, "name", None) or (entry_point.name if index == 0 else None)
                    if name is None:
                        raise TypeError("plugin object has no .name")
                    self.add(name, obj, origin=origin)
            except Exception as error:  # a broken plugin must not break the tool
                message = f"{type(error).__name__}: {error}"
                self.plugin_errors[entry_point.name] = message
                log.warning("could not load %s plugin '%s' from %s: %s", self.kind, entry_point.name,
                            entry_point.value, message)

    def _accepts(self, obj: object) -> bool:
        """True when ``obj`` itself is a valid registrable object (not a factory)."""
        if self._validate is None:
            return not callable(obj) or hasattr(obj, "name")
        try:
            self._validate(obj)
        except TypeError:
            return False
        return True

    @staticmethod
    def _normalise(name: str) -> str:
        return name.strip().lower()
