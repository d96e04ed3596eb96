"""The default price book: every chip type priced, every estimate recomputed from the
catalogue by the rule it states, consumption prices that add up to the card-hour."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from importlib import resources

import pytest

from pocgrid.catalog import default_catalog
from pocgrid.price_book import (
    DEVICE_US_PER_HOUR,
    GIB,
    default_price_book,
    from_proto,
    rental_cost,
    to_proto,
)
from pocgrid.pricing import ANY_CHIP, Usage, rate
from pocgrid.v1 import metering_pb2

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _raw() -> dict:
    return json.loads(resources.files("pocgrid").joinpath("data/price_book.json").read_text())


def test_every_catalogue_chip_has_a_card_price_with_sources() -> None:
    book = default_price_book()
    assert {c.name for c in default_catalog().chips} == set(book.cards)
    for card in book.cards.values():
        assert card.sources and card.method, card.chip
        if card.basis == "estimated":
            assert card.method.startswith("ESTIMATE"), card.chip
    assert book.cards[book.reference_chip].basis == "published"
    published = {c.chip for c in book.cards.values() if c.basis == "published"}
    assert {"a100-80gb-sxm", "h100-80gb-sxm", "h200-141gb-sxm", "mi300x"} <= published


def _dense(chip) -> float | None:
    return chip.peak("fp16") or chip.peak("bf16")


def test_estimates_follow_the_rule_they_state_from_the_catalogue() -> None:
    """Recomputed here from chips.json, so a catalogue change that moves an estimate fails
    until the book is rebuilt (and its version bumped)."""
    cat, raw = default_catalog(), _raw()
    ref = cat.chip(raw["estimate_reference"]["chip"])
    ref_price = Decimal(raw["estimate_reference"]["card_hour"])
    for item in raw["chips"]:
        if item["basis"] != "estimated":
            continue
        chip = cat.chip(item["chip"])
        if _dense(chip):
            ratio = Decimal(str(_dense(chip))) / Decimal(str(_dense(ref)))
        elif chip.memory_gib:
            ratio = Decimal(str(chip.memory_gib)) / Decimal(str(ref.memory_gib))
        elif chip.tdp_w:
            ratio = Decimal(str(chip.tdp_w)) / Decimal(str(ref.tdp_w))
        else:
            ratio = Decimal(1)
        expected = (ref_price * ratio).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
        assert Decimal(item["card_hour"]) == expected, item["chip"]
        assert re.search(rf"= {expected}$", item["method"]), item["method"]


def test_a_whole_card_busy_with_all_its_memory_for_an_hour_costs_one_card_hour() -> None:
    book = default_price_book()
    for chip in ("ascend-910b", "a100-80gb-sxm", "mlu370-x8"):
        card = book.cards[chip]
        assert card.memory_gib
        charges = rate(
            book.book,
            [
                Usage(chip, "busy_device_us", DEVICE_US_PER_HOUR, NOW),
                Usage(chip, "memory_byte_seconds", round(card.memory_gib * GIB) * 3600, NOW),
                Usage(chip, "output_tokens", 10_000, NOW),
            ],
        )
        assert sum(c.exact for c in charges) == Fraction(card.card_hour), chip
        assert {c.price_version for c in charges} == {book.book.version}


def test_hand_computed_consumption_prices() -> None:
    book = default_price_book()
    # ascend-910b: ESTIMATE 1.59 x 320/312 = 1.6307... -> 1.63/h; 80 % busy, 20 % memory.
    assert book.cards["ascend-910b"].card_hour == Decimal("1.63")
    assert book.busy_device_hour("ascend-910b") == Decimal("1.304")
    assert book.memory_gib_hour("ascend-910b") == Fraction("0.326") / 64
    # 90 busy device-seconds: 1.304 * 90 / 3600 = 0.0326 exactly.
    (charge,) = rate(book.book, [Usage("ascend-910b", "busy_device_us", 90_000_000, NOW)])
    assert charge.amount == Decimal("0.032600")


def test_a_chip_type_the_book_does_not_list_is_priced_as_the_reference() -> None:
    book = default_price_book()
    assert book.book.price("no-such-chip", "busy_device_us") == book.book.price(
        ANY_CHIP, "busy_device_us"
    )
    assert book.card("no-such-chip") == book.cards[book.reference_chip]


def test_the_contract_form_round_trips() -> None:
    sourced = default_price_book()
    msg = to_proto(sourced)
    book, cards = from_proto(metering_pb2.PriceBook.FromString(msg.SerializeToString()))
    assert book == sourced.book
    assert {c: cards[c].card_hour for c in cards} == {
        c: sourced.cards[c].card_hour for c in sourced.cards
    }
    one = to_proto(sourced, "mlu370-x8")
    assert [c.chip for c in one.cards] == ["mlu370-x8"]
    assert {p.chip for p in one.prices} == {"mlu370-x8", ANY_CHIP}
    assert one.cards[0].basis == metering_pb2.PRICE_BASIS_ESTIMATED


def test_rental_cost_is_exact() -> None:
    # 2 cards held 90 minutes at 1.63/h: 2 * 1.5 * 1.63 = 4.89.
    assert rental_cost(Decimal("1.63"), 2, 5400) == Fraction("4.89")
    with pytest.raises(ValueError):
        rental_cost(Decimal(1), -1, 1)
