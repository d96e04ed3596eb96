"""The time-of-use tariff: peak, flat and valley hours of the day and their price multipliers.

One definition, below both services that use it: metering prices usage by the period it ended in,
and the scheduler shifts deferrable work into valleys by the same hours (pure: no I/O). A
``LoadCap`` adds the grid side of peak shaving: how many devices may be busy in each period.
``parse_tariff`` reads both from one JSON document (``pocgrid sched replay --tariff FILE``)::

    {"utc_offset_hours": 8,
     "hours": {"0": "valley", "8": "flat", "10": "peak", "15": "flat", "18": "peak",
               "21": "flat", "23": "valley"},
     "multipliers": {"peak": "1.6", "flat": "1", "valley": "0.4"},
     "cap_devices": {"peak": 40, "flat": 60},
     "cap_watts": {"peak": 16000}}

``cap_watts`` caps the busy devices' power instead of (or as well as) their count: each device
counts its chip's TDP from the catalogue, times its share (the scheduler passes the figures).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class LoadCap:
    """How many devices (device-equivalents: a half-shared device counts 0.5) may be busy in
    each period; a period without an entry is uncapped. The scheduler holds deferrable work
    back so the busy count stays under the cap, except work whose deadline cannot wait."""

    devices: Mapping[Period, float]
    watts: Mapping[Period, float] = field(default_factory=dict)
    """Power of the busy devices (TDP x share, W) per period; a period without one uncapped."""

    def __post_init__(self) -> None:
        for name, caps in (("cap_devices", self.devices), ("cap_watts", self.watts)):
            for period, cap in caps.items():
                if not cap >= 0:
                    raise ValueError(f"{name}.{period} must be >= 0, got {cap}")

    def at(self, tariff: TimeOfUse, when: datetime) -> float | None:
        """The device cap in force at ``when`` (None: uncapped)."""
        return self.devices.get(tariff.period(when))

    def watts_at(self, tariff: TimeOfUse, when: datetime) -> float | None:
        """The power cap in force at ``when`` (None: uncapped)."""
        return self.watts.get(tariff.period(when))


NO_CAP: Final = LoadCap({})


@dataclass(frozen=True, slots=True)
class TariffFile:
    time_of_use: TimeOfUse
    cap: LoadCap


def parse_tariff(text: str) -> TariffFile:
    """A tariff and its load cap from JSON (format in the module docstring); ValueError naming
    the field and the rule for anything malformed."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"tariff: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("tariff: must be a JSON object")
    # "about" and "sources" are for people (where the hours and prices come from)
    known = {
        "utc_offset_hours",
        "hours",
        "multipliers",
        "cap_devices",
        "cap_watts",
        "about",
        "sources",
    }
    extra = sorted(set(doc) - known)
    if extra:
        raise ValueError(f"tariff: unknown field {extra[0]!r} (known: {', '.join(sorted(known))})")

    def period(value: object, where: str) -> Period:
        try:
            return Period(str(value))
        except ValueError:
            names = ", ".join(p.value for p in Period)
            raise ValueError(f"tariff.{where}: {value!r} is not a period ({names})") from None

    hours_doc = doc.get("hours")
    if not isinstance(hours_doc, dict) or not hours_doc:
        raise ValueError("tariff.hours: must be an object of start hour -> period")
    hours: dict[int, Period] = {}
    for key, value in hours_doc.items():
        try:
            hour = int(key)
        except ValueError:
            raise ValueError(f"tariff.hours: key {key!r} is not an hour 0..23") from None
        hours[hour] = period(value, f"hours.{key}")
    mult_doc = doc.get("multipliers", {})
    if not isinstance(mult_doc, dict):
        raise ValueError("tariff.multipliers: must be an object of period -> multiplier")
    multipliers: dict[Period, Decimal] = {}
    for key, value in mult_doc.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"tariff.multipliers.{key}: must be a number")
        try:
            multipliers[period(key, f"multipliers.{key}")] = Decimal(str(value))
        except ArithmeticError:
            raise ValueError(f"tariff.multipliers.{key}: {value!r} is not a number") from None
    offset = doc.get("utc_offset_hours", 0)
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not -14 <= offset <= 14:
        raise ValueError("tariff.utc_offset_hours: must be a number of hours in -14..14")

    def caps(name: str, unit: str) -> dict[Period, float]:
        cap_doc = doc.get(name, {})
        if not isinstance(cap_doc, dict):
            raise ValueError(f"tariff.{name}: must be an object of period -> {unit}")
        out: dict[Period, float] = {}
        for key, value in cap_doc.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"tariff.{name}.{key}: must be a number >= 0")
            out[period(key, f"{name}.{key}")] = float(value)
        return out

    devices = caps("cap_devices", "devices")
    watts = caps("cap_watts", "watts")
    try:
        tou = TimeOfUse(hours, multipliers, timedelta(hours=offset))
    except ValueError as exc:
        raise ValueError(f"tariff: {exc}") from None
    return TariffFile(tou, LoadCap(devices, watts))
