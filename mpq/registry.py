"""The one shape of mpq's registries (methods, networks): entries by name, in registration order."""
from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> entry`` (each entry has a ``name``), with one-line errors naming the choices."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, entry: Any, *, replace: bool = False) -> Any:
        """Register ``entry`` under ``entry.name``; a second entry of that name needs ``replace``."""
        if entry.name in self and not replace:
            raise ValueError(f"{self.kind} {entry.name!r} is registered already (pass replace=True to redefine it)")
        self[entry.name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Drop ``name`` if registered (tests that register a toy entry clean up with this)."""
        self.pop(name, None)

    def lookup(self, name: str) -> Any:
        """The entry of ``name``, or a one-line ``ValueError`` naming the registered ones."""
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}: choose one of {list(self)}") from None
