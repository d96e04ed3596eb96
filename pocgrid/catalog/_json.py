"""A small typed reader over parsed JSON, so the data loaders stay strictly typed.

Every failure names the file and the dotted key path: a malformed data file must say where it
is wrong, not raise a bare KeyError from deep inside a loader.
"""

from __future__ import annotations

from typing import TypeVar

from pocgrid.catalog.errors import CatalogDataError
from pocgrid.catalog.sourcing import Sourced

T = TypeVar("T")


class JsonObject:
    """One JSON object with its location, offering typed getters."""

    __slots__ = ("_data", "_where")

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise CatalogDataError(f"{where}: expected an object, got {type(data).__name__}")
        self._data: dict[str, object] = data
        self._where = where

    @property
    def where(self) -> str:
        return self._where

    def names(self) -> list[str]:
        return list(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str) -> object:
        if key not in self._data:
            raise CatalogDataError(f"{self._where}: missing key '{key}'")
        return self._data[key]

    def string(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise CatalogDataError(f"{self._where}.{key}: expected a string")
        return value

    def opt_string(self, key: str, default: str = "") -> str:
        return self.string(key) if key in self._data else default

    def integer(self, key: str) -> int:
        value = self._get(key)
        # bool is an int subclass; a true/false where a number belongs is a data error.
        if isinstance(value, bool) or not isinstance(value, int):
            raise CatalogDataError(f"{self._where}.{key}: expected an integer")
        return value

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CatalogDataError(f"{self._where}.{key}: expected a number")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise CatalogDataError(f"{self._where}.{key}: expected true or false")
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CatalogDataError(f"{self._where}.{key}: expected a list of strings")
        return tuple(str(v) for v in value)

    def obj(self, key: str) -> JsonObject:
        return JsonObject(self._get(key), f"{self._where}.{key}")

    def opt_obj(self, key: str) -> JsonObject | None:
        return self.obj(key) if key in self._data else None

    def provenance(self) -> tuple[bool, tuple[str, ...], str]:
        """The ``verified``/``sources``/``note`` triple every sourced entry carries."""
        verified = self.boolean("verified")
        sources = self.str_list("sources")
        if verified and not sources:
            raise CatalogDataError(f"{self._where}: verified=true needs at least one source")
        return verified, sources, self.opt_string("note")

    def sourced_str(self, key: str) -> Sourced[str]:
        entry = self.obj(key)
        verified, sources, note = entry.provenance()
        return Sourced(entry.string("value"), verified, sources, note)

    def sourced_int(self, key: str) -> Sourced[int]:
        entry = self.obj(key)
        verified, sources, note = entry.provenance()
        return Sourced(entry.integer("value"), verified, sources, note)

    def sourced_float(self, key: str) -> Sourced[float]:
        entry = self.obj(key)
        verified, sources, note = entry.provenance()
        return Sourced(entry.number("value"), verified, sources, note)

    def sourced_str_list(self, key: str) -> Sourced[tuple[str, ...]]:
        entry = self.obj(key)
        verified, sources, note = entry.provenance()
        return Sourced(entry.str_list("value"), verified, sources, note)
