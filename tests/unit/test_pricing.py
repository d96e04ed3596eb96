"""Price books, charge models and time of use, on hand-computed examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace

import pytest

from pocgrid.meters import METERS, byte_seconds, device_us, record_quantities
from pocgrid.pricing import (
    ANY_CHIP,
    Graduated,
    Package,
    Price,
    PriceBook,
    PriceBooks,
    Standard,
    Tier,
    Usage,
    Volume,
    rate,
    round_money,
)
from pocgrid.tariff import Period, TimeOfUse
from services.core.usage import AMOUNT_FIELDS

D = Decimal
T0 = datetime(2026, 12, 1, tzinfo=UTC)

# Graduated / volume tiers: 1..1000 at 0.002, 1001..10000 at 0.001 (+ 1.00 flat), above 0.0005.
TIERS = (
    Tier(1000, D("0.002")),
    Tier(10_000, D("0.001"), D("1.00")),
    Tier(None, D("0.0005")),
)


def test_every_usage_amount_has_a_meter() -> None:
    assert sorted(m.source_field for m in METERS.values()) == sorted(AMOUNT_FIELDS)


def test_record_quantities_are_exact_integers() -> None:
    record = SimpleNamespace(
        tokens_in=100,
        tokens_out=40,
        samples=0,
        busy_device_us=1_500_000,
        memory_byte_seconds=(1 << 30) // 4,
    )
    assert record_quantities(record) == {
        "input_tokens": 100,
        "output_tokens": 40,
        "samples": 0,
        "busy_device_us": 1_500_000,
        "memory_byte_seconds": (1 << 30) // 4,
    }
    # A producer that measured 0.1 s (not exact in binary) reports whole microseconds.
    assert device_us(0.1) == 100_000 and byte_seconds(0.25) == (1 << 30) // 4
    # Ten thousand 0.1 s records sum to exactly 1000 s, which float sums do not.
    assert sum([0.1] * 10_000) != 1000.0
    assert sum(device_us(0.1) for _ in range(10_000)) == 1_000_000_000
    with pytest.raises(ValueError, match="< 0"):
        METERS["samples"].quantity(-1)
    with pytest.raises(ValueError, match="whole number"):
        METERS["busy_device_us"].quantity(0.5)  # type: ignore[arg-type]


def test_standard() -> None:
    assert Standard(D("0.002")).charge(1234) == Fraction("2.468")
    assert Standard(D("0.002")).charge(0) == 0
    with pytest.raises(ValueError):
        Standard(D("-1"))
    with pytest.raises(ValueError):
        Standard(D("1")).charge(-1)


def test_graduated_prices_each_unit_in_its_tier() -> None:
    g = Graduated(TIERS)
    assert g.charge(0) == 0
    assert g.charge(1000) == Fraction("2")  # 1000 x 0.002
    # 1000 x 0.002 + 1 flat + 1 x 0.001
    assert g.charge(1001) == Fraction("3.001")
    # 2 + (1 + 9000 x 0.001) + 2000 x 0.0005 = 2 + 10 + 1
    assert g.charge(12_000) == Fraction(13)


def test_volume_prices_every_unit_at_the_tier_of_the_total() -> None:
    v = Volume(TIERS)
    assert v.charge(0) == 0
    assert v.charge(1000) == Fraction(2)  # 1000 x 0.002
    assert v.charge(1001) == Fraction("2.001")  # 1001 x 0.001 + 1
    assert v.charge(12_000) == Fraction(6)  # 12000 x 0.0005


def test_tiers_are_checked() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        Graduated((Tier(10, D(1)),))
    with pytest.raises(ValueError, match="increasing"):
        Volume((Tier(10, D(1)), Tier(5, D(1)), Tier(None, D(1))))
    with pytest.raises(ValueError, match="at least one"):
        Graduated(())


def test_package_rounds_up_after_free_units() -> None:
    p = Package(size=1_000_000, price=D("0.50"), free_units=100_000)
    assert p.charge(0) == 0
    assert p.charge(100_000) == 0
    assert p.charge(100_001) == Fraction("0.5")
    assert p.charge(2_100_000) == Fraction(1)
    assert p.charge(2_100_001) == Fraction("1.5")
    with pytest.raises(ValueError):
        Package(size=0, price=D(1))


# China's daily tariff shape (UTC+8): valley 23-07, flat 07-10 / 15-18 / 21-23, peak 10-15 / 18-21.
TOU = TimeOfUse(
    hours={
        7: Period.FLAT,
        10: Period.PEAK,
        15: Period.FLAT,
        18: Period.PEAK,
        21: Period.FLAT,
        23: Period.VALLEY,
    },
    multipliers={Period.PEAK: D("1.5"), Period.FLAT: D("1"), Period.VALLEY: D("0.5")},
    utc_offset=timedelta(hours=8),
)


def _local(hour: int, minute: int = 0) -> datetime:
    """That local (UTC+8) time on 2026-12-01, as UTC."""
    return datetime(2026, 12, 1, hour, minute, tzinfo=UTC) - timedelta(hours=8)


def test_time_of_use_periods_wrap_at_midnight() -> None:
    assert TOU.period(_local(0)) is Period.VALLEY
    assert TOU.period(_local(6, 59)) is Period.VALLEY
    assert TOU.period(_local(7)) is Period.FLAT
    assert TOU.period(_local(10)) is Period.PEAK
    assert TOU.period(_local(14, 59)) is Period.PEAK
    assert TOU.period(_local(15)) is Period.FLAT
    assert TOU.period(_local(19)) is Period.PEAK
    assert TOU.period(_local(22)) is Period.FLAT
    assert TOU.period(_local(23, 30)) is Period.VALLEY
    with pytest.raises(ValueError, match="aware"):
        TOU.period(datetime(2026, 12, 1, 3))
    with pytest.raises(ValueError, match="no multiplier"):
        TimeOfUse({0: Period.PEAK}, {Period.FLAT: D(1)})


def _book(version: str, start: datetime, unit_price: str) -> PriceBook:
    return PriceBook(
        version=version,
        effective_from=start,
        currency="CNY",
        prices={
            ("ascend-910b2", "output_tokens"): Price(Standard(D(unit_price)), TOU),
            (ANY_CHIP, "output_tokens"): Price(Standard(D("0.001"))),
            (ANY_CHIP, "busy_device_us"): Price(Graduated(TIERS), TOU),
        },
    )


def test_standard_with_time_of_use_is_the_sum_of_each_period() -> None:
    book = _book("2026-12", T0, "0.002")
    usage = [
        Usage("ascend-910b2", "output_tokens", 1000, _local(11)),  # peak: 1000 x 0.002 x 1.5 = 3
        Usage("ascend-910b2", "output_tokens", 2000, _local(8)),  # flat: 2000 x 0.002 = 4
        Usage("ascend-910b2", "output_tokens", 4000, _local(2)),  # valley: 4000 x 0.002 x .5 = 4
        Usage("mlu370-x8", "output_tokens", 500, _local(11)),  # any chip, no TOU: 0.5
    ]
    ascend, mlu = rate(book, usage)
    assert (ascend.chip, ascend.quantity, ascend.amount) == ("ascend-910b2", 7000, D("11"))
    assert ascend.by_period == {Period.PEAK: 1000, Period.FLAT: 2000, Period.VALLEY: 4000}
    assert ascend.price_version == "2026-12" and ascend.currency == "CNY"
    assert (mlu.chip, mlu.quantity, mlu.amount) == ("mlu370-x8", 500, D("0.5"))


def test_tiered_time_of_use_uses_the_tier_of_the_total_and_the_weighted_multiplier() -> None:
    book = _book("2026-12", T0, "0.002")
    # 12000 device-us, graduated: 13 (above); 6000 at peak (1.5), 6000 in the valley (0.5):
    # weighted multiplier (6000 x 1.5 + 6000 x 0.5) / 12000 = 1, so 13.
    usage = [
        Usage("ascend-910b2", "busy_device_us", 6000, _local(12)),
        Usage("ascend-910b2", "busy_device_us", 6000, _local(3)),
    ]
    (charge,) = rate(book, usage)
    assert charge.amount == D(13)
    # All at peak: 13 x 1.5 = 19.5
    (peak,) = rate(book, [Usage("ascend-910b2", "busy_device_us", 12_000, _local(12))])
    assert peak.amount == D("19.5")


def test_amounts_round_half_to_even_once() -> None:
    assert round_money(Fraction(1, 3)) == D("0.333333")
    assert round_money(Fraction("0.0000005")) == D("0.000000")
    assert round_money(Fraction("0.0000015")) == D("0.000002")
    # 1 token at 0.0000001 is kept exact before rounding.
    book = PriceBook("v", T0, "CNY", {(ANY_CHIP, "input_tokens"): Price(Standard(D("1e-7")))})
    (charge,) = rate(book, [Usage("a100", "input_tokens", 3, T0)])
    assert charge.exact == Fraction(3, 10_000_000) and charge.amount == D("0.000000")


def test_unpriced_usage_and_unknown_meters_are_refused() -> None:
    book = _book("2026-12", T0, "0.002")
    with pytest.raises(LookupError, match="no price for meter samples on chip a100"):
        rate(book, [Usage("a100", "samples", 1, T0)])
    with pytest.raises(ValueError, match="unknown meter"):
        rate(book, [Usage("a100", "watts", 1, T0)])
    with pytest.raises(ValueError, match=">= 0"):
        rate(book, [Usage("a100", "output_tokens", -1, T0)])
    with pytest.raises(ValueError, match="unknown meter"):
        PriceBook("v", T0, "CNY", {(ANY_CHIP, "watts"): Price(Standard(D(1)))})


def test_versions_are_in_force_from_their_start() -> None:
    dec = _book("2026-12", T0, "0.002")
    jan = _book("2027-01", datetime(2027, 1, 1, tzinfo=UTC), "0.003")
    books = PriceBooks((dec, jan))
    assert books.at(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)).version == "2026-12"
    assert books.at(datetime(2027, 1, 1, tzinfo=UTC)).version == "2027-01"
    with pytest.raises(LookupError, match="no price book"):
        books.at(datetime(2026, 11, 30, tzinfo=UTC))
    (charge,) = rate(
        books.at(datetime(2027, 1, 2, tzinfo=UTC)),
        [Usage("ascend-910b2", "output_tokens", 1000, _local(8))],
    )
    assert charge.amount == D(3) and charge.price_version == "2027-01"
    with pytest.raises(ValueError, match="increasing"):
        PriceBooks((jan, dec))
    with pytest.raises(ValueError, match="unique"):
        PriceBooks((dec, _book("2026-12", datetime(2027, 2, 1, tzinfo=UTC), "0.001")))
