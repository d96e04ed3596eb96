"""Closed sets of chip facts are written once: the catalogue's Literal types, read everywhere."""

from __future__ import annotations

from typing import get_args

from pocgrid import precision
from pocgrid.catalog import (
    PRECISION_BYTES,
    PRECISIONS,
    VENDOR_FAMILIES,
    Precision,
    VendorFamily,
    default_catalog,
)
from pocgrid.v1 import common_pb2


def test_tuples_are_the_literals() -> None:
    assert get_args(VendorFamily) == VENDOR_FAMILIES
    assert get_args(Precision) == PRECISIONS
    assert tuple(PRECISION_BYTES) == PRECISIONS


def test_proto_precision_enum_maps_onto_the_catalogue_names() -> None:
    assert tuple(precision.PRECISION_BY_NAME) == PRECISIONS
    assert precision.to_proto("bf16") == common_pb2.PRECISION_BF16
    assert precision.to_name(common_pb2.PRECISION_INT8) == "int8"
    named = {n for n in common_pb2.Precision.keys() if n != "PRECISION_UNSPECIFIED"}  # noqa: SIM118
    assert {f"PRECISION_{p.upper()}" for p in PRECISIONS} == named


def test_every_family_has_a_vendor_file_and_every_chip_a_family() -> None:
    catalog = default_catalog()
    assert tuple(catalog.vendors) == VENDOR_FAMILIES
    assert {c.vendor_family for c in catalog.chips} <= set(VENDOR_FAMILIES)
