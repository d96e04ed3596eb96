"""Meters, versioned price books, charge models and time-of-use multipliers (pure: no I/O).

Below every service: metering rates usage with it, the scheduler's ``cost`` policy and its
simulator and the evaluator's cost per million tokens price work with the same code.

Quantities are integers in each meter's unit (tokens, samples, device-microseconds,
byte-seconds), so sums are exact. Money is exact too: every charge is computed with
``fractions.Fraction`` and rounded once, to ``MONEY_PLACES`` decimal places (half to even),
when it becomes a ``Decimal``.

Charge models (Lago's names), each over the total quantity ``Q`` of one meter, chip type and
billing period:

- ``Standard(unit_price, per)``: ``Q * unit_price / per`` (``per`` units are quoted together).
- ``Graduated(tiers)``: each unit is priced by the tier it falls in; a tier's flat fee is
  charged once when any unit reaches it.
- ``Volume(tiers)``: every unit is priced at the tier that ``Q`` falls in, plus that tier's flat
  fee (nothing for ``Q == 0``).
- ``Package(size, price, free_units)``: ``ceil((Q - free_units) / size)`` packages.

Time of use: each quantity is attributed to the tariff period (peak, flat, valley) of the
instant its usage ended (the window rule of the store: usage counts where it ended). The
charge of the period's total is then weighted by the quantities' multipliers:
``charge = base(Q) * sum(q_p * m_p) / Q``. For ``Standard`` this is exactly
``sum(q_p * unit_price * m_p)``; for tiered models the tier is chosen by the whole quantity
(a team is not pushed into a dearer tier by splitting its work over periods) and the
multiplier is the quantity-weighted mean.

Price books are versioned: ``PriceBooks.at(t)`` is the book in force at ``t``, and every
``Charge`` names the version it was priced with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Final

from pocgrid.meters import METERS, Unit
from pocgrid.tariff import FLAT_RATE, Period, TimeOfUse

MONEY_PLACES: Final = 6
"""Decimal places of a rounded charge (micro-units of the currency)."""
ANY_CHIP: Final = "*"
"""A price book entry for every chip type without its own."""


# --- charge models -----------------------------------------------------------------------------


def _price(value: Decimal | int | str) -> Fraction:
    d = Decimal(value)
    if not d.is_finite() or d < 0:
        raise ValueError(f"price must be finite and >= 0, got {value!r}")
    return Fraction(d)


def _check_quantity(quantity: int) -> None:
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: int | None
    """Last unit of the tier (inclusive); None for the last, unbounded tier."""
    unit_price: Decimal
    flat_fee: Decimal = Decimal(0)


def _check_tiers(tiers: Sequence[Tier]) -> None:
    if not tiers:
        raise ValueError("at least one tier is needed")
    if tiers[-1].up_to is not None:
        raise ValueError("the last tier must be unbounded (up_to=None)")
    last = 0
    for tier in tiers[:-1]:
        if tier.up_to is None or tier.up_to <= last:
            raise ValueError("tiers must have increasing up_to > 0; only the last is unbounded")
        last = tier.up_to
    for tier in tiers:
        _price(tier.unit_price)
        _price(tier.flat_fee)


@dataclass(frozen=True, slots=True)
class Standard:
    unit_price: Decimal
    """Price of ``per`` units."""
    per: int = 1
    """Units the price is quoted for: a device-hour is 3.6e9 device-us, and 1.59 per
    3,600,000,000 is exact where 1.59 / 3.6e9 has no finite decimal."""

    def __post_init__(self) -> None:
        _price(self.unit_price)
        if self.per <= 0:
            raise ValueError(f"per must be > 0, got {self.per}")

    def charge(self, quantity: int) -> Fraction:
        _check_quantity(quantity)
        return quantity * _price(self.unit_price) / self.per


@dataclass(frozen=True, slots=True)
class Graduated:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _check_tiers(self.tiers)

    def charge(self, quantity: int) -> Fraction:
        _check_quantity(quantity)
        total = Fraction(0)
        lower = 0
        for tier in self.tiers:
            if quantity <= lower:
                break
            upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
            total += (upper - lower) * _price(tier.unit_price) + _price(tier.flat_fee)
            lower = upper if tier.up_to is None else tier.up_to
        return total


@dataclass(frozen=True, slots=True)
class Volume:
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        _check_tiers(self.tiers)

    def charge(self, quantity: int) -> Fraction:
        _check_quantity(quantity)
        if quantity == 0:
            return Fraction(0)
        for tier in self.tiers:
            if tier.up_to is None or quantity <= tier.up_to:
                return quantity * _price(tier.unit_price) + _price(tier.flat_fee)
        raise AssertionError("unreachable: the last tier is unbounded")


@dataclass(frozen=True, slots=True)
class Package:
    size: int
    price: Decimal
    free_units: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError("package size must be > 0")
        if self.free_units < 0:
            raise ValueError("free_units must be >= 0")
        _price(self.price)

    def charge(self, quantity: int) -> Fraction:
        _check_quantity(quantity)
        billable = max(0, quantity - self.free_units)
        return -(-billable // self.size) * _price(self.price)


ChargeModel = Standard | Graduated | Volume | Package


# --- price books -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    model: ChargeModel
    time_of_use: TimeOfUse = FLAT_RATE


@dataclass(frozen=True, slots=True)
class PriceBook:
    version: str
    effective_from: datetime
    currency: str
    prices: Mapping[tuple[str, str], Price]
    """(chip type or ANY_CHIP, meter name) -> price."""

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("a price book needs a version")
        if self.effective_from.tzinfo is None:
            raise ValueError("effective_from must be an aware datetime")
        for _chip, meter in self.prices:
            if meter not in METERS:
                raise ValueError(f"unknown meter {meter!r}; known: {', '.join(METERS)}")

    def price(self, chip: str, meter: str) -> Price | None:
        """The chip's own price for the meter, else the book's price for any chip, else None."""
        return self.prices.get((chip, meter)) or self.prices.get((ANY_CHIP, meter))


@dataclass(frozen=True, slots=True)
class PriceBooks:
    """Every version of the price book, each in force from its ``effective_from``."""

    books: tuple[PriceBook, ...]

    def __post_init__(self) -> None:
        versions = [b.version for b in self.books]
        if len(set(versions)) != len(versions):
            raise ValueError("price book versions must be unique")
        starts = [b.effective_from for b in self.books]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise ValueError("price books must be in strictly increasing effective_from order")

    def at(self, when: datetime) -> PriceBook:
        current: PriceBook | None = None
        for book in self.books:
            if book.effective_from <= when:
                current = book
        if current is None:
            raise LookupError(f"no price book is in force at {when.isoformat()}")
        return current


@dataclass(frozen=True, slots=True)
class Usage:
    """One metered quantity: how much of a meter a chip type used, ending at ``ended_at``."""

    chip: str
    meter: str
    quantity: int
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class Charge:
    chip: str
    meter: str
    unit: Unit
    quantity: int
    by_period: Mapping[Period, int]
    amount: Decimal
    currency: str
    price_version: str
    exact: Fraction = field(repr=False)
    """The amount before rounding."""


def round_money(value: Fraction) -> Decimal:
    """``value`` to MONEY_PLACES decimal places, half to even, exactly (Fraction's round)."""
    units = round(value * 10**MONEY_PLACES)
    return Decimal(units).scaleb(-MONEY_PLACES)


def rate(book: PriceBook, usage: Iterable[Usage]) -> list[Charge]:
    """Charges of one billing period's usage under one price book: one per (chip, meter),
    sorted by chip then meter. Raises LookupError for usage the book has no price for."""
    grouped: dict[tuple[str, str], dict[Period, int]] = {}
    for u in usage:
        if u.meter not in METERS:
            raise ValueError(f"unknown meter {u.meter!r}")
        _check_quantity(u.quantity)
        price = book.price(u.chip, u.meter)
        if price is None:
            raise LookupError(
                f"price book {book.version} has no price for meter {u.meter} on chip {u.chip}"
            )
        period = price.time_of_use.period(u.ended_at)
        periods = grouped.setdefault((u.chip, u.meter), {})
        periods[period] = periods.get(period, 0) + u.quantity
    charges: list[Charge] = []
    for (chip, meter), periods in sorted(grouped.items()):
        price = book.price(chip, meter)
        assert price is not None
        total = sum(periods.values())
        exact = Fraction(0)
        if total:
            weighted = sum(q * price.time_of_use.multiplier(p) for p, q in periods.items())
            exact = price.model.charge(total) * weighted / total
        charges.append(
            Charge(
                chip=chip,
                meter=meter,
                unit=METERS[meter].unit,
                quantity=total,
                by_period=dict(periods),
                amount=round_money(exact),
                currency=book.currency,
                price_version=book.version,
                exact=exact,
            )
        )
    return charges
