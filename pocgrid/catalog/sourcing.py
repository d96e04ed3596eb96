"""A value together with where it came from and whether a public source confirmed it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sourced(Generic[T]):
    """A data point carried with its provenance, so reports can say 'estimated' honestly."""

    value: T
    """The value the emulation uses."""
    verified: bool
    """True only when a public source (listed in ``sources``) states this value."""
    sources: tuple[str, ...]
    """Where the value was read; empty for pure estimates."""
    note: str = ""
    """Why an estimate was chosen, or what is uncertain about a sourced value."""
