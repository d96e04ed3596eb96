"""Invoices from usage records (pure: no I/O): monthly periods, lines per chip, meter and price
book, late usage as adjustments, and the rental comparison.

An invoice covers one tenant and one calendar month (UTC), named ``YYYY-MM``. It holds every
record of the tenant not yet on a final invoice whose usage ended before the month's end:

- records that ended inside the month are its own lines;
- records that ended in an earlier month whose invoice is already final (late events, and
  corrections of usage already invoiced) are *adjustment* lines, naming the month they belong
  to. A final invoice is never changed.

Lines: per (adjustment month or none, chip, meter, price-book version), rated by
``pocgrid.pricing.rate`` with the book in force when each usage ended. Every line names its
version; the records behind it are the ones stored with the invoice's id (final) or matching
the line (draft), so ``ListUsage(invoice_id=..., chip=...)`` lists them.

Usage that ended before the first price book came into force (a producer's clock far off, an
old replay, a book packaged later than the usage) had no price in force. It is still billed,
never dropped and never a reason to stop: it is priced by the *earliest* book, on lines of its
own marked ``before_first_book``, so the invoice says which usage was priced by a book not yet
in force when it happened. (Refusing it at ingest instead would leave real usage in the
dead-letter stream, which expires, and nothing to price it with on replay; and a finalizer
that cannot price a record would hold back that tenant's every later invoice.) Its records are
the line's chip's ones that ended before that book's ``effective_from``.

An adjustment for month ``A`` is charged what it changes of ``A``'s charge: ``rate(billed +
adjustment) - rate(billed)`` per chip and meter under the same book, where ``billed`` is the
usage of ``A`` already on final invoices (``A``'s own and earlier adjustments). Under tiered
prices (graduated, volume, package) a unit's price depends on the month's total, so a
correction that takes ``A`` back across a tier boundary is credited what ``A`` would have cost
without it, not the corrected quantity priced as if it were a month of its own; under standard
prices the two are the same.

Rental comparison: the same work done by renting whole cards for the time they were held. Per
job and chip type (a record without a job is its own), the cards are the most devices any of
its records used, held from its first start to its last end: ``card_hour x cards x held``.
Corrections change quantities, not the time a card was held, so they are left out of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Protocol

from pocgrid.meters import METERS
from pocgrid.price_book import SourcedBook, rental_cost
from pocgrid.pricing import PriceBook, Usage, rate, round_money

_MICRO = timedelta(microseconds=1)

#: A (chip, meter)'s total quantity and its exact charge.
Charged = tuple[int, Fraction]


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        try:
            year, month = (int(p) for p in text.split("-"))
        except ValueError:
            raise ValueError(f"{text!r} is not a period: YYYY-MM, e.g. 2026-11") from None
        if not (1970 <= year <= 9999 and 1 <= month <= 12):
            raise ValueError(f"{text!r} is not a period: YYYY-MM, e.g. 2026-11")
        return cls(year, month)

    @classmethod
    def of(cls, when: datetime) -> Month:
        when = when.astimezone(UTC)
        return cls(when.year, when.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


class RecordLike(Protocol):
    """A stored usage record (a row): what an invoice reads."""

    usage_id: str
    chip: str
    job_id: str
    corrects: str
    devices: int
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class Line:
    chip: str
    meter: str
    quantity: int
    amount: Decimal
    exact: Fraction
    price_version: str
    adjustment_for: str
    """The earlier month this line adjusts; empty for the invoice's own month."""
    records: int
    before_first_book: bool = False
    """Its usage ended before the first book's start: priced by that earliest book."""


@dataclass(frozen=True, slots=True)
class Rental:
    job_id: str
    chip: str
    cards: int
    held_us: int
    card_hour: Decimal
    exact: Fraction


@dataclass(frozen=True, slots=True)
class Composed:
    lines: tuple[Line, ...]
    rentals: tuple[Rental, ...]
    currency: str
    total: Decimal
    rental_total: Decimal
    price_versions: tuple[str, ...]
    records: int
    usage_ids: tuple[str, ...] = field(repr=False, default=())


def book_at(books: Sequence[SourcedBook], when: datetime) -> SourcedBook:
    current = [b for b in books if b.book.effective_from <= when]
    if not current:
        raise LookupError(f"no price book is in force at {when.isoformat()}")
    return max(current, key=lambda b: b.book.effective_from)


def book_for(books: Sequence[SourcedBook], when: datetime) -> tuple[SourcedBook, bool]:
    """The book that prices usage that ended at ``when``, and whether ``when`` is before the
    first book's start (then it is the earliest book: see the module's docstring)."""
    if not books:
        raise LookupError("no price book at all")
    earliest = min(books, key=lambda b: b.book.effective_from)
    if when < earliest.book.effective_from:
        return earliest, True
    return book_at(books, when), False


def _us(seconds_delta: Fraction) -> int:
    return int(seconds_delta * 1_000_000)


def compose(
    month: Month,
    records: Iterable[RecordLike],
    books: Sequence[SourcedBook],
    billed: Iterable[RecordLike] = (),
) -> Composed:
    """The invoice of ``month`` over ``records`` (the tenant's unbilled records that ended
    before the month's end); ``billed``: the tenant's records already on final invoices that
    ended in the months ``records`` adjust (what an adjustment is rated against)."""
    rows = sorted(records, key=lambda r: (r.ended_at, r.usage_id))
    # (adjusted month, price-book version, before the first book) -> its records.
    groups: dict[tuple[str, str, bool], list[RecordLike]] = {}
    for r in rows:
        if r.ended_at >= month.end:
            raise ValueError(f"record {r.usage_id} ended after {month}")
        adjusts = "" if r.ended_at >= month.start else str(Month.of(r.ended_at))
        sourced, early = book_for(books, r.ended_at)
        groups.setdefault((adjusts, sourced.book.version, early), []).append(r)
    before: dict[tuple[str, str, bool], list[RecordLike]] = {}
    for r in billed:
        if r.ended_at >= month.start:
            raise ValueError(f"billed record {r.usage_id} ended in {month}, not before it")
        sourced, early = book_for(books, r.ended_at)
        before.setdefault((str(Month.of(r.ended_at)), sourced.book.version, early), []).append(r)
    lines: list[Line] = []
    currencies: set[str] = set()
    for (adjusts, version, early), members in sorted(groups.items()):
        book = book_for(books, members[0].ended_at)[0].book
        currencies.add(book.currency)
        counts: dict[str, int] = {}
        for r in members:
            counts[r.chip] = counts.get(r.chip, 0) + 1
        base = before.get((adjusts, version, early), []) if adjusts else []
        after = _charges(book, [*base, *members])
        already = _charges(book, base)
        for chip, meter in sorted(_charges(book, members)):
            q, x = after.get((chip, meter), (0, Fraction(0)))
            q0, x0 = already.get((chip, meter), (0, Fraction(0)))
            lines.append(
                Line(
                    chip=chip,
                    meter=meter,
                    quantity=q - q0,
                    amount=round_money(x - x0),
                    exact=x - x0,
                    price_version=version,
                    adjustment_for=adjusts,
                    records=counts[chip],
                    before_first_book=early,
                )
            )
    rentals = _rentals(rows, books)
    if len(currencies) > 1:
        raise ValueError(f"price books in more than one currency: {sorted(currencies)}")
    currency = currencies.pop() if currencies else (books[-1].book.currency if books else "")
    return Composed(
        lines=tuple(lines),
        rentals=tuple(rentals),
        currency=currency,
        total=round_money(sum((line.exact for line in lines), Fraction(0))),
        rental_total=round_money(sum((r.exact for r in rentals), Fraction(0))),
        price_versions=tuple(sorted({line.price_version for line in lines})),
        records=len(rows),
        usage_ids=tuple(r.usage_id for r in rows),
    )


def _charges(book: PriceBook, records: Iterable[RecordLike]) -> dict[tuple[str, str], Charged]:
    """(chip, meter) -> (quantity, exact charge) of ``records`` under ``book``.

    Corrections carry signed deltas and the event time of the usage they correct, so with their
    usage among ``records`` they net out against it exactly, before rating. A correction
    without its usage (which is on a final invoice that ``records`` leave out) is left negative
    and rated on its own as a credit.
    """
    net: dict[tuple[str, str, datetime], int] = {}
    for r in records:
        for name, m in METERS.items():
            quantity = getattr(r, m.source_field)
            if quantity:
                key = (r.chip, name, r.ended_at)
                net[key] = net.get(key, 0) + quantity
    debits = rate(book, [Usage(c, m, q, t) for (c, m, t), q in net.items() if q > 0])
    credits = rate(book, [Usage(c, m, -q, t) for (c, m, t), q in net.items() if q < 0])
    out: dict[tuple[str, str], Charged] = {}
    for charge, sign in [(c, 1) for c in debits] + [(c, -1) for c in credits]:
        q, x = out.get((charge.chip, charge.meter), (0, Fraction(0)))
        out[(charge.chip, charge.meter)] = (q + sign * charge.quantity, x + sign * charge.exact)
    return out


def _rentals(rows: Sequence[RecordLike], books: Sequence[SourcedBook]) -> list[Rental]:
    spans: dict[tuple[str, str], tuple[datetime, datetime, int]] = {}
    for r in rows:
        if r.corrects:
            continue
        key = (r.job_id or f"usage:{r.usage_id}", r.chip)
        start, end, cards = spans.get(key, (r.started_at, r.ended_at, 0))
        spans[key] = (min(start, r.started_at), max(end, r.ended_at), max(cards, r.devices, 1))
    out: list[Rental] = []
    for (job, chip), (start, end, cards) in sorted(spans.items()):
        card_hour = book_for(books, end)[0].card(chip).card_hour
        held = Fraction((end - start) // _MICRO, 1_000_000)
        out.append(
            Rental(job, chip, cards, _us(held), card_hour, rental_cost(card_hour, cards, held))
        )
    return out
