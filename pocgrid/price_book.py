"""The default price book: what renting a whole card costs per hour, per chip type, with its
source, and the consumption prices derived from it (pure: reads one packaged data file).

``data/price_book.json`` holds one card-hour price per chip type of the catalogue. Each says
whether it is *published* (a public on-demand list price, with the listing and the date read),
*converted* (a public price in another currency, at the rate it states) or *estimated* (no
public price: the reference chip's price scaled by a ratio of catalogue figures, the rule
written out). ``tests/unit/test_price_book.py`` recomputes every estimate from the catalogue.

Consumption prices: a card-hour is split into busy device time and memory by the book's
``memory_share`` ``m``::

    busy_device_us       card_hour * (1 - m)  per 3.6e9 device-microseconds
    memory_byte_seconds  card_hour * m        per (device memory bytes * 3600) byte-seconds
    tokens, samples      0 (metered and shown; device time already pays for them)

so a job that keeps a whole card busy, holding all its memory, for an hour pays exactly one
card-hour, and what it leaves idle or does not hold is not charged. Renting the card for the
time held (``rental_cost``) is what the consumption charge is compared with.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from typing import Final, Literal

from pocgrid.catalog import Catalog, default_catalog
from pocgrid.meters import METERS
from pocgrid.pricing import (
    ANY_CHIP,
    ChargeModel,
    Graduated,
    Package,
    Price,
    PriceBook,
    PriceBooks,
    Standard,
    Tier,
    Volume,
)
from pocgrid.tariff import Period, TimeOfUse
from pocgrid.v1 import metering_pb2

Basis = Literal["published", "converted", "estimated"]
BASES: Final[tuple[Basis, ...]] = ("published", "converted", "estimated")
DEVICE_US_PER_HOUR: Final = 3_600_000_000
SECONDS_PER_HOUR: Final = 3600
GIB: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class CardPrice:
    chip: str
    card_hour: Decimal
    """Renting one whole card for one hour, in the book's currency."""
    basis: Basis
    sources: tuple[str, ...]
    method: str
    """The listing read, the conversion, or the estimate's rule with its numbers."""
    memory_gib: float | None
    """The card's memory (catalogue); None where the catalogue has no figure."""


@dataclass(frozen=True, slots=True)
class SourcedBook:
    book: PriceBook
    cards: Mapping[str, CardPrice]
    memory_share: Decimal
    reference_chip: str
    """The priced chip estimates are scaled from."""

    def card(self, chip: str) -> CardPrice:
        """The chip's card price; the reference chip's for a chip type the book lacks."""
        return self.cards.get(chip) or self.cards[self.reference_chip]

    def busy_device_hour(self, chip: str) -> Decimal:
        return self.card(chip).card_hour * (1 - self.memory_share)

    def memory_gib_hour(self, chip: str) -> Fraction:
        """One GiB held for an hour (exact: memory sizes need not divide the price)."""
        card = self.card(chip)
        memory = _memory_gib(card, self.cards[self.reference_chip])
        return Fraction(card.card_hour * self.memory_share) / Fraction(memory)


def _memory_gib(card: CardPrice, reference: CardPrice) -> float:
    """The card's memory; the reference card's where the catalogue has no figure."""
    memory = card.memory_gib or reference.memory_gib
    if not memory:
        raise ValueError(f"the reference chip {reference.chip} needs a memory figure")
    return memory


def rental_cost(card_hour: Decimal, cards: int, held_seconds: Fraction | int) -> Fraction:
    """Renting ``cards`` whole cards for ``held_seconds`` (exact)."""
    if cards < 0 or held_seconds < 0:
        raise ValueError("cards and held_seconds must be >= 0")
    return Fraction(card_hour) * cards * Fraction(held_seconds) / SECONDS_PER_HOUR


def _parse(data: Mapping[str, object], catalog: Catalog) -> SourcedBook:
    share = Decimal(str(data["memory_share"]))
    if not 0 <= share <= 1:
        raise ValueError(f"memory_share must be in 0..1, got {share}")
    cards: dict[str, CardPrice] = {}
    raw_chips = data["chips"]
    assert isinstance(raw_chips, list)
    for item in raw_chips:
        chip = catalog.chip(item["chip"])  # an unknown slug fails here, by name
        basis = item["basis"]
        if basis not in BASES:
            raise ValueError(f"{chip.name}: basis {basis!r} is not one of {BASES}")
        price = Decimal(item["card_hour"])
        if not price.is_finite() or price <= 0:
            raise ValueError(f"{chip.name}: card_hour must be > 0")
        cards[chip.name] = CardPrice(
            chip=chip.name,
            card_hour=price,
            basis=basis,
            sources=tuple(item["sources"]),
            method=item["method"],
            memory_gib=chip.memory_gib,
        )
    reference = data["estimate_reference"]
    assert isinstance(reference, dict)
    ref_chip = str(reference["chip"])
    if cards[ref_chip].basis != "published":
        raise ValueError("the estimate reference must have a published price")
    prices: dict[tuple[str, str], Price] = {}
    # ANY_CHIP: a chip type the book does not list is priced as the reference.
    for name, card in [*cards.items(), (ANY_CHIP, cards[ref_chip])]:
        memory_bytes = round(_memory_gib(card, cards[ref_chip]) * GIB)
        prices[(name, "busy_device_us")] = Price(
            Standard(card.card_hour * (1 - share), per=DEVICE_US_PER_HOUR)
        )
        prices[(name, "memory_byte_seconds")] = Price(
            Standard(card.card_hour * share, per=memory_bytes * SECONDS_PER_HOUR)
        )
    for meter in ("input_tokens", "output_tokens", "samples"):
        prices[(ANY_CHIP, meter)] = Price(Standard(Decimal(0)))
    effective = datetime.fromisoformat(str(data["effective_from"]).replace("Z", "+00:00"))
    book = PriceBook(str(data["version"]), effective, str(data["currency"]), prices)
    return SourcedBook(book, cards, share, ref_chip)


@functools.cache
def default_price_book() -> SourcedBook:
    """The packaged default book, loaded and checked against the catalogue once."""
    text = resources.files("pocgrid").joinpath("data/price_book.json").read_text("utf-8")
    return _parse(json.loads(text), default_catalog())


def card_hour_prices(chips: Iterable[str]) -> dict[str, float]:
    """A busy card-hour by chip type from the default book: what the scheduler's ``cost``
    policy ranks chip types by, live and in the simulator (one source for both)."""
    book = default_price_book()
    return {chip: float(book.card(chip).card_hour) for chip in chips}


def default_price_books() -> PriceBooks:
    """Every version metering serves by default: the packaged book."""
    return PriceBooks((default_price_book().book,))


# --- the contract's form (GetPriceBook) ------------------------------------------------------


def _dec(value: Decimal | Fraction) -> str:
    """A decimal string; a Fraction with no finite decimal is rounded to 12 places (display)."""
    if isinstance(value, Fraction):
        value = Decimal(value.numerator) / Decimal(value.denominator)
        value = value.quantize(Decimal("1e-12")).normalize()
    return format(value.normalize(), "f")


def _meter_price(chip: str, meter: str, price: Price) -> metering_pb2.MeterPrice:
    tou = price.time_of_use
    out = metering_pb2.MeterPrice(
        chip=chip,
        meter=meter,
        unit=METERS[meter].unit.value,
        bands=[
            metering_pb2.TimeOfUseBand(start_hour=h, period=p.value)
            for h, p in sorted(tou.hours.items())
        ],
        multipliers={p.value: _dec(Decimal(m)) for p, m in tou.multipliers.items()},
        utc_offset_minutes=int(tou.utc_offset.total_seconds() // 60),
    )
    model = price.model
    if isinstance(model, Standard):
        out.model, out.unit_price, out.per = "standard", _dec(model.unit_price), model.per
    elif isinstance(model, Graduated | Volume):
        out.model = "graduated" if isinstance(model, Graduated) else "volume"
        out.tiers.extend(
            metering_pb2.PriceTier(
                up_to=t.up_to or 0, unit_price=_dec(t.unit_price), flat_fee=_dec(t.flat_fee)
            )
            for t in model.tiers
        )
    else:
        out.model, out.package_size = "package", model.size
        out.package_price, out.free_units = _dec(model.price), model.free_units
    return out


def to_proto(sourced: SourcedBook, chip: str = "") -> metering_pb2.PriceBook:
    """The book as GetPriceBook returns it; only ``chip``'s prices (and ANY_CHIP's) if given."""
    book = sourced.book
    msg = metering_pb2.PriceBook(
        version=book.version,
        currency=book.currency,
        memory_share=_dec(sourced.memory_share),
        estimate_reference=sourced.reference_chip,
    )
    msg.effective_from.FromDatetime(book.effective_from)
    for card in sorted(sourced.cards.values(), key=lambda c: c.chip):
        if chip and card.chip != chip:
            continue
        msg.cards.append(
            metering_pb2.CardPrice(
                chip=card.chip,
                card_hour=_dec(card.card_hour),
                busy_device_hour=_dec(sourced.busy_device_hour(card.chip)),
                memory_gib_hour=_dec(sourced.memory_gib_hour(card.chip)),
                basis=_BASIS_TO_PROTO[card.basis],
                sources=card.sources,
                method=card.method,
                memory_gib=card.memory_gib or 0.0,
            )
        )
    for (price_chip, meter), price in sorted(book.prices.items()):
        if chip and price_chip not in (chip, ANY_CHIP):
            continue
        msg.prices.append(_meter_price(price_chip, meter, price))
    return msg


_BASIS_TO_PROTO: Final[Mapping[Basis, metering_pb2.PriceBasis.ValueType]] = {
    "published": metering_pb2.PRICE_BASIS_PUBLISHED,
    "converted": metering_pb2.PRICE_BASIS_CONVERTED,
    "estimated": metering_pb2.PRICE_BASIS_ESTIMATED,
}
_BASIS_FROM_PROTO: Final = {v: k for k, v in _BASIS_TO_PROTO.items()}


def _model_from_proto(msg: metering_pb2.MeterPrice) -> ChargeModel:
    if msg.model == "standard":
        return Standard(Decimal(msg.unit_price), per=msg.per or 1)
    if msg.model in ("graduated", "volume"):
        tiers = tuple(
            Tier(t.up_to or None, Decimal(t.unit_price), Decimal(t.flat_fee or "0"))
            for t in msg.tiers
        )
        return Graduated(tiers) if msg.model == "graduated" else Volume(tiers)
    if msg.model == "package":
        return Package(msg.package_size, Decimal(msg.package_price), msg.free_units)
    raise ValueError(f"unknown charge model {msg.model!r}")


def from_proto(msg: metering_pb2.PriceBook) -> tuple[PriceBook, dict[str, CardPrice]]:
    """A GetPriceBook answer back as the pricing library's book and its card prices, so a
    client (the evaluator, the scheduler) prices work with the code metering bills with."""
    prices: dict[tuple[str, str], Price] = {}
    for p in msg.prices:
        tou = TimeOfUse(
            {b.start_hour: Period(b.period) for b in p.bands},
            {Period(k): Decimal(v) for k, v in p.multipliers.items()},
            timedelta(minutes=p.utc_offset_minutes),
        )
        prices[(p.chip, p.meter)] = Price(_model_from_proto(p), tou)
    book = PriceBook(msg.version, msg.effective_from.ToDatetime(tzinfo=UTC), msg.currency, prices)
    cards = {
        c.chip: CardPrice(
            chip=c.chip,
            card_hour=Decimal(c.card_hour),
            basis=_BASIS_FROM_PROTO[c.basis],
            sources=tuple(c.sources),
            method=c.method,
            memory_gib=c.memory_gib or None,
        )
        for c in msg.cards
    }
    return book, cards


def sourced_from_proto(msg: metering_pb2.PriceBook) -> SourcedBook:
    """A whole book (as ``to_proto`` wrote it) back, with its card prices and derivation."""
    book, cards = from_proto(msg)
    if msg.estimate_reference not in cards:
        raise ValueError(f"price book {msg.version}: no card price for its reference chip")
    return SourcedBook(book, cards, Decimal(msg.memory_share), msg.estimate_reference)
