"""The catalogue: loading the packaged JSON and looking chips and models up."""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Final

from pocgrid.catalog.errors import UnknownChipError, UnknownModelError
from pocgrid.catalog.records import CatalogDataError, Chip, Model

SCHEMA_VERSION: Final = 1
CHIPS_FILE: Final = "chips.json"
MODELS_FILE: Final = "models.json"

_MAX_SUGGESTIONS: Final = 5
_PARENTHETICAL = re.compile(r"\s*\(.*\)\s*$")


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _aliases(name: str, display: str) -> list[str]:
    # Trailing parentheticals carry qualifiers ("(1 of 2 chips on Atlas 300I Duo)") that
    # nobody types, so the bare product name is accepted too.
    return [_norm(name), _norm(display), _norm(_PARENTHETICAL.sub("", display))]


def _alias_index(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    """alias -> canonical name; an alias shared by two entries is dropped as ambiguous."""
    index: dict[str, str] = {}
    ambiguous: set[str] = set()
    for name, display in entries:
        for alias in _aliases(name, display):
            if alias in index and index[alias] != name:
                ambiguous.add(alias)
            index.setdefault(alias, name)
    for alias in ambiguous:
        del index[alias]
    return index


def _suggest(query: str, names: Sequence[str]) -> list[str]:
    q = _norm(query)
    found = [n for n in names if q and q in n.casefold()]
    found += difflib.get_close_matches(q, [n.casefold() for n in names], n=_MAX_SUGGESTIONS)
    by_folded = {n.casefold(): n for n in names}
    unique = dict.fromkeys(by_folded.get(n.casefold(), n) for n in found)
    return list(unique)[:_MAX_SUGGESTIONS]


class Catalog:
    """Chips and models, in source order, with lookups by name."""

    __slots__ = (
        "_chip_alias",
        "_chips",
        "_chips_by_name",
        "_model_alias",
        "_models",
        "_models_by_name",
    )

    def __init__(self, chips: Iterable[Chip], models: Iterable[Model]) -> None:
        self._chips = tuple(chips)
        self._models = tuple(models)
        self._chips_by_name = {c.name: c for c in self._chips}
        self._models_by_name = {m.name: m for m in self._models}
        if len(self._chips_by_name) != len(self._chips):
            raise CatalogDataError("duplicate chip names in catalogue")
        if len(self._models_by_name) != len(self._models):
            raise CatalogDataError("duplicate model names in catalogue")
        self._chip_alias = _alias_index((c.name, c.display_name) for c in self._chips)
        self._model_alias = _alias_index((m.name, m.name) for m in self._models)

    @classmethod
    def load(cls, data_dir: Path | None = None) -> Catalog:
        """Read ``chips.json`` and ``models.json`` from ``data_dir``, default the packaged data."""
        if data_dir is None:
            package_data = resources.files("pocgrid.catalog").joinpath("data")
            chips_text = package_data.joinpath(CHIPS_FILE).read_text(encoding="utf-8")
            models_text = package_data.joinpath(MODELS_FILE).read_text(encoding="utf-8")
        else:
            chips_text = (data_dir / CHIPS_FILE).read_text(encoding="utf-8")
            models_text = (data_dir / MODELS_FILE).read_text(encoding="utf-8")
        chips = [Chip.from_dict(d) for d in _records(CHIPS_FILE, chips_text, "chips")]
        models = [Model.from_dict(d) for d in _records(MODELS_FILE, models_text, "models")]
        return cls(chips, models)

    @property
    def chips(self) -> tuple[Chip, ...]:
        return self._chips

    @property
    def models(self) -> tuple[Model, ...]:
        return self._models

    def chip(self, name: str) -> Chip:
        """The chip with slug ``name`` exactly; raises UnknownChipError."""
        try:
            return self._chips_by_name[name]
        except KeyError:
            raise UnknownChipError(name, _suggest(name, list(self._chips_by_name))) from None

    def model(self, name: str) -> Model:
        """The model named ``name`` exactly; raises UnknownModelError."""
        try:
            return self._models_by_name[name]
        except KeyError:
            raise UnknownModelError(name, _suggest(name, list(self._models_by_name))) from None

    def find_chip(self, name_or_display_name: str) -> Chip:
        """Case-insensitive lookup by slug, display name, or display name without its
        parenthetical (``"ascend 310p"``); raises UnknownChipError."""
        canonical = self._chip_alias.get(_norm(name_or_display_name))
        if canonical is None:
            names = list(self._chips_by_name)
            raise UnknownChipError(name_or_display_name, _suggest(name_or_display_name, names))
        return self._chips_by_name[canonical]

    def find_model(self, name: str) -> Model:
        """Case-insensitive lookup by name, or name without its parenthetical
        (``"resnet-50"``); raises UnknownModelError."""
        canonical = self._model_alias.get(_norm(name))
        if canonical is None:
            raise UnknownModelError(name, _suggest(name, list(self._models_by_name)))
        return self._models_by_name[canonical]

    def emulatable_chips(self) -> tuple[Chip, ...]:
        """Chips with enough public numbers (memory, bandwidth, a 16-bit peak) to emulate."""
        return tuple(c for c in self._chips if c.emulatable)

    def __repr__(self) -> str:
        return f"Catalog(chips={len(self._chips)}, models={len(self._models)})"


def _records(file_name: str, text: str, key: str) -> list[Mapping[str, object]]:
    document: object = json.loads(text)
    if not isinstance(document, dict):
        raise CatalogDataError(f"{file_name}: top level must be an object")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CatalogDataError(
            f"{file_name}: schema_version {version!r}, this loader reads {SCHEMA_VERSION}"
        )
    records = document.get(key)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise CatalogDataError(f"{file_name}: {key!r} must be a list of objects")
    return list(records)


@functools.lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The packaged catalogue, read once per process."""
    return Catalog.load()
