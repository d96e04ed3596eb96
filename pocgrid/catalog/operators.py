"""Operator coverage: which ONNX operators each vendor runtime executes natively, from
``data/operators.json``.

The file holds one base set (the ONNX ops pocgrid's scenario models use) and, per family and
per chip, the ops missing from it, each with a reason and whether that gap is documented or
an estimate. "Not native" means the adapter must supplement the op (decompose it or fall back
to the host); it does not mean the model cannot run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from pocgrid.catalog._json import JsonObject
from pocgrid.catalog.errors import CatalogDataError
from pocgrid.catalog.records import VENDOR_FAMILIES, VendorFamily

OPERATORS_FILE: Final = "operators.json"

Basis = Literal["documented", "estimate"]
_BASES: tuple[Basis, ...] = ("documented", "estimate")


@dataclass(frozen=True, slots=True)
class OperatorGap:
    """Why one op is not native on a family or chip."""

    op: str
    reason: str
    basis: Basis
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FamilyOperators:
    family: VendorFamily
    summary: str
    """How this family's list was arrived at (which public list, or why it is an estimate)."""
    missing: Mapping[str, OperatorGap]
    chip_missing: Mapping[str, Mapping[str, OperatorGap]]
    """Extra gaps for particular chips (catalogue slug), on top of the family's."""

    def gaps_for(self, chip_slug: str) -> dict[str, OperatorGap]:
        gaps = dict(self.missing)
        gaps.update(self.chip_missing.get(chip_slug, {}))
        return gaps


@dataclass(frozen=True, slots=True)
class OperatorCatalog:
    base: frozenset[str]
    """Every op any runtime is asked about; an op outside it is native nowhere."""
    base_summary: str
    families: Mapping[VendorFamily, FamilyOperators]

    def gaps(self, family: VendorFamily, chip_slug: str) -> dict[str, OperatorGap]:
        return self.families[family].gaps_for(chip_slug)

    def native(self, family: VendorFamily, chip_slug: str) -> frozenset[str]:
        return self.base.difference(self.gaps(family, chip_slug))


def _gaps(entry: JsonObject, base: frozenset[str]) -> MappingProxyType[str, OperatorGap]:
    gaps: dict[str, OperatorGap] = {}
    for op in entry.names():
        if op not in base:
            # A gap for an op outside the base set would silently mean nothing; reject it.
            raise CatalogDataError(f"{entry.where}.{op}: not in the base operator set")
        item = entry.obj(op)
        basis = item.string("basis")
        if basis not in _BASES:
            raise CatalogDataError(f"{item.where}.basis: '{basis}' is not one of {_BASES}")
        sources = item.str_list("sources")
        if basis == "documented" and not sources:
            raise CatalogDataError(f"{item.where}: basis 'documented' needs a source")
        gaps[op] = OperatorGap(
            op=op,
            reason=item.string("reason"),
            basis="documented" if basis == "documented" else "estimate",
            sources=sources,
        )
    return MappingProxyType(gaps)


def parse_operators(data: object, where: str) -> OperatorCatalog:
    root = JsonObject(data, where)
    base_entry = root.obj("base")
    ops = base_entry.str_list("ops")
    if len(set(ops)) != len(ops):
        raise CatalogDataError(f"{base_entry.where}.ops: duplicate operator names")
    base = frozenset(ops)
    families_entry = root.obj("families")
    families: dict[VendorFamily, FamilyOperators] = {}
    known: dict[str, VendorFamily] = {f: f for f in VENDOR_FAMILIES}
    for name in families_entry.names():
        family = known.get(name)
        if family is None:
            raise CatalogDataError(f"{families_entry.where}.{name}: unknown family")
        entry = families_entry.obj(family)
        chips_entry = entry.obj("chips")
        families[family] = FamilyOperators(
            family=family,
            summary=entry.string("summary"),
            missing=_gaps(entry.obj("missing"), base),
            chip_missing=MappingProxyType(
                {slug: _gaps(chips_entry.obj(slug), base) for slug in chips_entry.names()}
            ),
        )
    absent = [f for f in VENDOR_FAMILIES if f not in families]
    if absent:
        raise CatalogDataError(f"{families_entry.where}: no operator entry for {absent}")
    return OperatorCatalog(
        base=base, base_summary=base_entry.string("summary"), families=MappingProxyType(families)
    )


def parse_operators_text(text: str, where: str) -> OperatorCatalog:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogDataError(f"{where}: not valid JSON ({exc})") from exc
    return parse_operators(data, where)
