"""Explicit registries: configs and CLI options name registered components, never import paths."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components of one kind (models, datasets, attacks, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove an entry (plugins registered by tests or notebooks); returns it."""
        if name not in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is not registered")
        return self._entries.pop(name)

    @contextlib.contextmanager
    def temporarily(self, name: str, obj: T) -> Iterator[T]:
        """Register `obj` under `name` inside the block only."""
        self.register(name)(obj)
        try:
            yield obj
        finally:
            self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise ConfigError(f"a {self.kind} is named by a string, got {type(name).__name__} {name!r}. "
                              f"Known: {', '.join(self.names())}.")
        if name in self._entries:
            return self._entries[name]
        folded = {k.lower(): k for k in self._entries}
        if name.lower() in folded:  # names are lower-case; `MNIST` means `mnist`
            return self._entries[folded[name.lower()]]
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."
            ) from None

    def create(self, name: str, /, **params: object) -> object:
        """Call the registered factory with keyword parameters; one that it does not take is a ConfigError
        naming it (a TypeError from the call), not a traceback."""
        factory = self.get(name)
        try:
            return factory(**params)  # type: ignore[operator]
        except TypeError as exc:
            raise ConfigError(f"{self.kind} {name!r}: bad parameter ({exc})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
