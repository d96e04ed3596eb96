"""The meters of a usage record, in integer units: the one definition, read by metering's
price books and by ``pocgrid usage`` (which must not import a service)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Final


class Unit(enum.StrEnum):
    TOKEN = "token"
    SAMPLE = "sample"
    DEVICE_MICROSECOND = "device_us"
    BYTE_SECOND = "byte_second"


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    unit: Unit
    source_field: str
    """The usage record's field it sums (an int64 in this meter's unit)."""

    def quantity(self, value: int) -> int:
        """The record field's value, checked: a whole number >= 0."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.source_field} must be a whole number, got {value!r}")
        if value < 0:
            raise ValueError(f"{self.source_field} < 0: {value!r}")
        return value


METERS: Final[Mapping[str, Meter]] = {
    m.name: m
    for m in (
        Meter("input_tokens", Unit.TOKEN, "tokens_in"),
        Meter("output_tokens", Unit.TOKEN, "tokens_out"),
        Meter("samples", Unit.SAMPLE, "samples"),
        Meter("busy_device_us", Unit.DEVICE_MICROSECOND, "busy_device_us"),
        Meter("memory_byte_seconds", Unit.BYTE_SECOND, "memory_byte_seconds"),
    )
}
"""The meters of a usage record, by name."""

DEVICE_US_PER_S: Final = 1_000_000
GIB: Final = 1 << 30


def device_us(seconds: float) -> int:
    """Busy device time in whole microseconds, for a producer that measured it in seconds
    (rounded once, here, from the float's exact value)."""
    return round(Fraction(seconds) * DEVICE_US_PER_S)


def byte_seconds(gib_seconds: float) -> int:
    """Memory held x time in whole byte-seconds, from GiB-seconds (rounded once, here)."""
    return round(Fraction(gib_seconds) * GIB)


def record_quantities(record: object) -> dict[str, int]:
    """Every meter's integer quantity in one usage record (or event, or row)."""
    return {name: m.quantity(getattr(record, m.source_field)) for name, m in METERS.items()}
