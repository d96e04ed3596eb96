"""Lookup errors of the catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class CatalogDataError(ValueError):
    """A catalogue data file does not have the expected shape; names the file and the key."""


class UnknownNameError(KeyError):
    """A chip or model name that the catalogue does not hold."""

    kind: ClassVar[str] = "name"

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(name)
        self.name = name
        self.suggestions = tuple(suggestions)

    # KeyError.__str__ would print only the repr of the key.
    def __str__(self) -> str:
        message = f"unknown {self.kind} {self.name!r}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        return message


class UnknownChipError(UnknownNameError):
    kind = "chip"


class UnknownModelError(UnknownNameError):
    kind = "model"
