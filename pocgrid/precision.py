"""Precision names (as the catalogue and CLI spell them) <-> the ``pocgrid.v1.Precision`` enum.

The mapping is read off the enum's descriptor (``PRECISION_BF16`` <-> ``bf16``) and checked
against the catalogue's ``PRECISIONS`` on import, so a precision added to one and not the other
fails loudly instead of being silently unmappable.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from pocgrid.catalog import PRECISIONS
from pocgrid.v1 import common_pb2

_PREFIX: Final = "PRECISION_"
_UNSPECIFIED: Final = "PRECISION_UNSPECIFIED"

_FROM_ENUM: Final = {
    name.removeprefix(_PREFIX).lower(): common_pb2.Precision.Value(name)
    for name in common_pb2.Precision.keys()  # noqa: SIM118 - an enum wrapper, not a dict
    if name != _UNSPECIFIED
}
if set(_FROM_ENUM) != set(PRECISIONS):  # pragma: no cover - a contract/catalogue drift
    raise ImportError(
        f"pocgrid.v1.Precision {sorted(_FROM_ENUM)} != catalogue PRECISIONS {sorted(PRECISIONS)}"
    )

PRECISION_BY_NAME: Final[Mapping[str, common_pb2.Precision.ValueType]] = MappingProxyType(
    {p: _FROM_ENUM[p] for p in PRECISIONS}
)
"""Catalogue name -> enum value, in the catalogue's ``PRECISIONS`` order."""
PRECISION_NAME: Final = MappingProxyType({int(v): k for k, v in PRECISION_BY_NAME.items()})


def to_proto(name: str) -> common_pb2.Precision.ValueType:
    try:
        return PRECISION_BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(
            f"precision: must be one of {', '.join(PRECISION_BY_NAME)} (got {name!r})"
        ) from None


def to_name(value: int) -> str:
    return PRECISION_NAME.get(value, "unspecified")
