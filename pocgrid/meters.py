"""The meters of a usage record, in integer units: the one definition, read by metering's
price books and by ``pocgrid usage`` (which must not import a service)."""

from __future__ import annotations

import enum
import math
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
    """The usage record's field it sums."""
    scale: int = 1
    """Integer units per unit of the source field (1e6 device-us per device-second)."""

    def quantity(self, value: float | int) -> int:
        """The record field's value in this meter's integer unit."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.source_field} is not finite: {value!r}")
        if value < 0:
            raise ValueError(f"{self.source_field} < 0: {value!r}")
        if isinstance(value, int):
            return value * self.scale
        # Fraction(value) is the float's exact value, so rounding happens once, here.
        return round(Fraction(value) * self.scale)


METERS: Final[Mapping[str, Meter]] = {
    m.name: m
    for m in (
        Meter("input_tokens", Unit.TOKEN, "tokens_in"),
        Meter("output_tokens", Unit.TOKEN, "tokens_out"),
        Meter("samples", Unit.SAMPLE, "samples"),
        Meter("busy_device_us", Unit.DEVICE_MICROSECOND, "busy_device_seconds", 1_000_000),
        Meter("memory_byte_seconds", Unit.BYTE_SECOND, "memory_gib_seconds", 1 << 30),
    )
}
"""The meters of a usage record, by name."""


def record_quantities(record: object) -> dict[str, int]:
    """Every meter's integer quantity in one usage record (or event, or row)."""
    return {name: m.quantity(getattr(record, m.source_field)) for name, m in METERS.items()}
