"""The catalogue: loading the packaged JSON and looking chips, models and vendor facts up."""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Final

from pocgrid.catalog.errors import CatalogDataError, UnknownChipError, UnknownModelError
from pocgrid.catalog.operators import (
    OPERATORS_FILE,
    OperatorCatalog,
    OperatorGap,
    parse_operators_text,
)
from pocgrid.catalog.records import Chip, Model, Precision, VendorFamily
from pocgrid.catalog.sourcing import Sourced
from pocgrid.catalog.vendors import VendorProfile, load_profiles

SCHEMA_VERSION: Final = 2
"""2: chips carry ``memory_gib`` (was ``memory_gb``, which held GiB)."""
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
    """Chips and models, in source order, with lookups by name; and, when loaded with them,
    the vendor families' runtime profiles and operator coverage, with per-chip lookups."""

    __slots__ = (
        "_chip_alias",
        "_chips",
        "_chips_by_name",
        "_model_alias",
        "_models",
        "_models_by_name",
        "_operators",
        "_vendors",
    )

    def __init__(
        self,
        chips: Iterable[Chip],
        models: Iterable[Model],
        vendors: Mapping[VendorFamily, VendorProfile] | None = None,
        operators: OperatorCatalog | None = None,
    ) -> None:
        self._vendors = vendors
        self._operators = operators
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
        self._check_vendor_data()

    @classmethod
    def load(cls, data_dir: Path | None = None) -> Catalog:
        """Read the whole catalogue from ``data_dir``, default the packaged data: ``chips.json``,
        ``models.json``, ``vendors/<family>.json`` and ``operators.json``."""
        if data_dir is None:
            package_data = resources.files("pocgrid.catalog").joinpath("data")

            def read(name: str) -> str:
                path = package_data
                for part in name.split("/"):
                    path = path.joinpath(part)
                return path.read_text(encoding="utf-8")
        else:
            root = data_dir

            def read(name: str) -> str:
                return (root / name).read_text(encoding="utf-8")

        chips = [Chip.from_dict(d) for d in _records(CHIPS_FILE, read(CHIPS_FILE), "chips")]
        models = [Model.from_dict(d) for d in _records(MODELS_FILE, read(MODELS_FILE), "models")]
        vendors = load_profiles(read)
        operators = parse_operators_text(read(OPERATORS_FILE), OPERATORS_FILE)
        return cls(chips, models, vendors, operators)

    def _check_vendor_data(self) -> None:
        """Per-chip entries of the vendor files must name chips of that family."""
        for family, profile in (self._vendors or {}).items():
            for slug in profile.chips:
                self._require_family(slug, family, f"vendors/{family}.json chips")
        if self._operators is not None:
            for family, ops in self._operators.families.items():
                for slug in ops.chip_missing:
                    self._require_family(slug, family, f"{OPERATORS_FILE} {family}.chips")

    def _require_family(self, slug: str, family: str, where: str) -> None:
        chip = self._chips_by_name.get(slug)
        if chip is None:
            raise CatalogDataError(f"{where}: {slug!r} is not a chip of the catalogue")
        if chip.vendor_family != family:
            raise CatalogDataError(f"{where}: {slug!r} is a {chip.vendor_family} chip")

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

    # -- vendor families: runtime profiles and operator coverage ---------------------------

    @property
    def vendors(self) -> Mapping[VendorFamily, VendorProfile]:
        """Every family's runtime profile, keyed by family."""
        if self._vendors is None:
            raise CatalogDataError("this catalogue was built without vendor profiles")
        return self._vendors

    @property
    def operators(self) -> OperatorCatalog:
        """The base operator set and each family's (and chip's) gaps in it."""
        if self._operators is None:
            raise CatalogDataError("this catalogue was built without operator data")
        return self._operators

    def vendor(self, family: VendorFamily) -> VendorProfile:
        """The runtime profile of one vendor family."""
        return self.vendors[family]

    def precisions(self, chip: Chip) -> tuple[Precision, ...]:
        """The number formats ``chip``'s runtime runs, in ``PRECISIONS`` order."""
        return self.vendor(chip.vendor_family).chip_precisions(chip)

    def operator_gaps(self, chip: Chip) -> dict[str, OperatorGap]:
        """Ops of the base set that ``chip``'s runtime does not run natively, with why."""
        return self.operators.gaps(chip.vendor_family, chip.name)

    def native_operators(self, chip: Chip) -> frozenset[str]:
        """Ops of the base set that ``chip``'s runtime runs natively."""
        return self.operators.native(chip.vendor_family, chip.name)

    def device_memory_gib(self, chip: Chip) -> float | None:
        """Memory of one device in GiB: the chip table's, else its vendor file's SMI figure."""
        return self.vendor(chip.vendor_family).device_memory_gib(chip)

    def compute_units(self, chip: Chip) -> Sourced[int] | None:
        """Compute units (AI cores, SMs, clusters, ...) of one device, where a source gives them."""
        facts = self.vendor(chip.vendor_family).chip_facts(chip.name)
        return None if facts is None else facts.compute_units

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
