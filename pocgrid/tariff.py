"""The time-of-use tariff: peak, flat and valley hours of the day and their price multipliers.

One definition, below both services that use it: metering prices usage by the period it ended in,
and the scheduler shifts deferrable work into valleys by the same hours (pure: no I/O).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Final


def _multiplier(value: Decimal | int | str) -> Fraction:
    d = Decimal(value)
    if not d.is_finite() or d < 0:
        raise ValueError(f"multiplier must be finite and >= 0, got {value!r}")
    return Fraction(d)


class Period(enum.StrEnum):
    PEAK = "peak"
    FLAT = "flat"
    VALLEY = "valley"


@dataclass(frozen=True, slots=True)
class TimeOfUse:
    """A daily tariff: which period each hour of the day is in, and each period's multiplier.

    ``hours`` maps the start hour (0..23, local time at ``utc_offset``) of each band to its
    period; a band runs until the next start hour (wrapping at midnight). Hour 0 need not be a
    start: the band before midnight wraps into it.
    """

    hours: Mapping[int, Period]
    multipliers: Mapping[Period, Decimal]
    utc_offset: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if not self.hours:
            raise ValueError("a time-of-use tariff needs at least one band")
        for hour in self.hours:
            if not 0 <= hour <= 23:
                raise ValueError(f"band start hour {hour} is not in 0..23")
        for period in set(self.hours.values()):
            if period not in self.multipliers:
                raise ValueError(f"no multiplier for period {period}")
            _multiplier(self.multipliers[period])

    def period(self, at: datetime) -> Period:
        if at.tzinfo is None:
            raise ValueError("time-of-use needs an aware datetime")
        hour = (at.astimezone(UTC) + self.utc_offset).hour
        starts = sorted(self.hours)
        before = [h for h in starts if h <= hour]
        return self.hours[before[-1] if before else starts[-1]]

    def multiplier(self, period: Period) -> Fraction:
        return _multiplier(self.multipliers[period])


FLAT_RATE: Final = TimeOfUse({0: Period.FLAT}, {Period.FLAT: Decimal(1)})
"""No time of use: every hour flat, multiplier 1."""
