"""Invoices composed from records, on hand-computed examples: lines per chip, meter and price
book, adjustments for earlier months, and the rental comparison."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from pocgrid.price_book import SourcedBook, default_price_book
from pocgrid.pricing import ANY_CHIP, Graduated, Price, PriceBook, Tier, Volume
from services.metering.invoicing import Composed, Month, compose

GIB = 1 << 30
NOV = Month(2026, 11)


@dataclass
class Rec:
    usage_id: str
    chip: str = "ascend-910b"
    job_id: str = "job-1"
    corrects: str = ""
    devices: int = 1
    tokens_in: int = 0
    tokens_out: int = 0
    samples: int = 0
    busy_device_us: int = 0
    memory_byte_seconds: int = 0
    started_at: datetime = datetime(2026, 11, 5, 10, tzinfo=UTC)
    ended_at: datetime = datetime(2026, 11, 5, 10, tzinfo=UTC)


def _at(h: int, m: int, s: int = 0) -> datetime:
    return datetime(2026, 11, 5, h, m, s, tzinfo=UTC)


def test_months() -> None:
    assert str(Month.parse("2026-12").next()) == "2027-01"
    assert Month(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC)
    assert Month.of(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == NOV
    for bad in ("2026-13", "2026", "26-11", "x"):
        with pytest.raises(ValueError):
            Month.parse(bad)


def test_rental_comparison_on_a_hand_computed_example() -> None:
    """A chat job on ascend-910b (card-hour 1.63, estimated), two devices, two 30 s requests
    20 minutes apart, each holding 32 GiB per device.

    Consumption: busy 2 x 2 x 30 = 120 device-s at 1.304/h = 120 x 1.304 / 3600 = 0.0434666..;
    memory 2 x 2 x 32 GiB x 30 s = 3840 GiB-s at 0.326 per 64 GiB-hour
    = 3840 x 0.326 / (64 x 3600) = 0.00543333..; total 0.048900 (exactly 0.0489).
    Renting: 2 cards held 10:00:00 -> 10:20:30 = 1230 s: 2 x 1230 x 1.63 / 3600 = 1.113833..
    -> 1.113833; saving 1.064933.
    """
    records = [
        Rec(
            f"u{i}",
            devices=2,
            tokens_in=500,
            tokens_out=200,
            busy_device_us=60_000_000,
            memory_byte_seconds=2 * 32 * GIB * 30,
            started_at=_at(10, 20 * i),
            ended_at=_at(10, 20 * i, 30),
        )
        for i in range(2)
    ]
    inv = compose(NOV, records, [default_price_book()])
    by_meter = {line.meter: line for line in inv.lines}
    assert by_meter["busy_device_us"].exact == Fraction(120) * Fraction("1.304") / 3600
    assert by_meter["memory_byte_seconds"].exact == Fraction(3840) * Fraction("0.326") / (64 * 3600)
    assert by_meter["input_tokens"].quantity == 1000 and by_meter["input_tokens"].exact == 0
    assert inv.total == Decimal("0.048900")
    [rental] = inv.rentals
    assert (rental.job_id, rental.chip, rental.cards, rental.held_us) == (
        "job-1",
        "ascend-910b",
        2,
        1_230_000_000,
    )
    assert rental.exact == Fraction(2 * 1230) * Fraction("1.63") / 3600
    assert inv.rental_total == Decimal("1.113833")
    assert inv.rental_total - inv.total == Decimal("1.064933")
    assert {line.price_version for line in inv.lines} == {"default-2026-12-01"}
    assert inv.records == 2


def test_earlier_months_are_adjustment_lines_and_corrections_net_out() -> None:
    late = Rec(
        "late",
        busy_device_us=3_600_000_000,
        started_at=datetime(2026, 10, 31, 23, tzinfo=UTC),
        ended_at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC),
    )
    own = Rec("own", busy_device_us=1_800_000_000)
    fix = Rec("fix", corrects="own", busy_device_us=-900_000_000)
    inv = compose(NOV, [own, late, fix], [default_price_book()])
    lines = {(line.adjustment_for, line.meter): line for line in inv.lines}
    # October's hour of 910b busy time: 1.304; November's 30 min less 15 min corrected: 0.326.
    assert lines[("2026-10", "busy_device_us")].amount == Decimal("1.304000")
    assert lines[("", "busy_device_us")].quantity == 900_000_000
    assert lines[("", "busy_device_us")].amount == Decimal("0.326000")
    # The correction changes what was used, not how long a card was held.
    assert sorted(r.job_id for r in inv.rentals) == ["job-1"]
    assert inv.rentals[0].held_us == (own.ended_at - late.started_at) // timedelta(microseconds=1)


def test_a_record_after_the_month_is_refused() -> None:
    with pytest.raises(ValueError):
        compose(
            NOV, [Rec("dec", ended_at=datetime(2026, 12, 1, tzinfo=UTC))], [default_price_book()]
        )


def _tiered(model: Graduated | Volume) -> SourcedBook:
    """The default book's cards (for the rental comparison), with samples priced by ``model``."""
    book = PriceBook(
        version="tiers-1",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        currency="CNY",
        prices={(ANY_CHIP, "samples"): Price(model)},
    )
    return replace(default_price_book(), book=book)


_OCT_END = datetime(2026, 10, 20, 12, tzinfo=UTC)
#: First 100 samples at 1.00 each, every further one at 0.50.
GRADUATED = Graduated((Tier(100, Decimal("1.00")), Tier(None, Decimal("0.50"))))
#: All samples at 1.00 up to 100 in the month, all at 0.60 beyond.
VOLUME = Volume((Tier(100, Decimal("1.00")), Tier(None, Decimal("0.60"))))


def _oct(usage_id: str, samples: int, corrects: str = "") -> Rec:
    return Rec(usage_id, samples=samples, corrects=corrects, started_at=_OCT_END, ended_at=_OCT_END)


def _adjustment(inv: Composed) -> tuple[int, Decimal]:
    [line] = [line for line in inv.lines if line.adjustment_for == "2026-10"]
    return line.quantity, line.amount


@pytest.mark.parametrize(
    ("model", "billed", "late", "expected"),
    [
        # October was billed 150 samples: 100 x 1.00 + 50 x 0.50 = 125.00. Taking 80 back leaves
        # 70 = 70.00, so the credit is 55.00 (80 rated alone would credit 80.00).
        (GRADUATED, [_oct("oct", 150)], _oct("fix", -80, "oct"), (-80, Decimal("-55.000000"))),
        # Volume: 150 x 0.60 = 90.00 billed; 70 x 1.00 = 70.00 after: a credit of 20.00 only,
        # the remaining samples falling back into the dearer tier (alone: 80.00).
        (VOLUME, [_oct("oct", 150)], _oct("fix", -80, "oct"), (-80, Decimal("-20.000000"))),
        # 30 late samples of October: 180 = 100 + 80 x 0.50 = 140.00, 15.00 more (alone: 30.00).
        (GRADUATED, [_oct("oct", 150)], _oct("late", 30), (30, Decimal("15.000000"))),
        # A second correction is rated against what October's invoices already say (150 less a
        # first correction of 30 on November's final invoice: 120 = 110.00), not against the
        # original: 70 = 70.00, a credit of 40.00.
        (
            GRADUATED,
            [_oct("oct", 150), _oct("fix1", -30, "oct")],
            _oct("fix2", -50, "oct"),
            (-50, Decimal("-40.000000")),
        ),
    ],
)
def test_an_adjustment_across_a_tier_boundary_is_rated_against_what_was_billed(
    model: Graduated | Volume, billed: list[Rec], late: Rec, expected: tuple[int, Decimal]
) -> None:
    books = [_tiered(model)]
    assert compose(Month(2026, 10), billed[:1], books).total == (
        Decimal("125.000000") if model is GRADUATED else Decimal("90.000000")
    )
    dec = Month(2026, 12)
    assert _adjustment(compose(dec, [late], books, billed)) == expected
    # Without what was billed, it is rated on its own: the old, wrong credit.
    alone = compose(dec, [late], books)
    assert _adjustment(alone) != expected


def test_usage_before_the_first_price_book_is_priced_by_the_earliest_and_says_so() -> None:
    """The default book is in force from 2026-01-01; usage that ended in December 2025 had no
    price in force. It is billed by that earliest book (an hour of ascend-910b busy time:
    1.63 x 0.8 = 1.304), on a line of its own marked before_first_book; the in-force usage
    of the same chip and meter is a separate, unmarked line."""
    dec25 = datetime(2025, 12, 31, 22, tzinfo=UTC)
    early = Rec("early", busy_device_us=3_600_000_000, started_at=dec25, ended_at=dec25)
    own = Rec(
        "own",
        busy_device_us=1_800_000_000,
        started_at=datetime(2026, 1, 5, 9, tzinfo=UTC),
        ended_at=datetime(2026, 1, 5, 9, 30, tzinfo=UTC),
    )
    books = [default_price_book()]
    assert books[0].book.effective_from == datetime(2026, 1, 1, tzinfo=UTC)
    inv = compose(Month(2025, 12), [early], books)
    [line] = [line for line in inv.lines if line.meter == "busy_device_us"]
    assert (line.amount, line.before_first_book, line.records) == (Decimal("1.304000"), True, 1)
    assert line.price_version == "default-2026-12-01" and inv.records == 1
    # The rental comparison takes its card-hour from the earliest book too.
    assert [r.card_hour for r in inv.rentals] == [Decimal("1.63")]
    # As a late record on January's invoice: an adjustment for 2025-12, still marked; January's
    # own half hour (0.652) is not.
    jan = compose(Month(2026, 1), [own, early], books)
    lines = {(x.adjustment_for, x.meter): x for x in jan.lines}
    assert lines[("2025-12", "busy_device_us")].before_first_book
    assert lines[("2025-12", "busy_device_us")].amount == Decimal("1.304000")
    assert not lines[("", "busy_device_us")].before_first_book
    assert lines[("", "busy_device_us")].amount == Decimal("0.652000")
    assert jan.total == Decimal("1.956000") and jan.records == 2
