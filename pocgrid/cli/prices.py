"""``pocgrid prices``: the price book in force, per chip type, with where each price comes from."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.json_format import MessageToDict

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.v1 import metering_pb2


def register(sub: Any) -> None:
    p = sub.add_parser("prices", help="the price book in force (card-hour and consumption prices)")
    p.add_argument("--chip", default="", help="only this chip type")
    p.add_argument("--json", action="store_true", help="the whole book, as GetPriceBook returns it")
    p.set_defaults(func=prices)


def _basis(value: metering_pb2.PriceBasis.ValueType) -> str:
    return metering_pb2.PriceBasis.Name(value).removeprefix("PRICE_BASIS_").lower()


def prices(args: argparse.Namespace) -> int:
    target = resolve(args)
    with Client(
        target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file
    ) as pg:
        book = pg.metering.GetPriceBook(metering_pb2.GetPriceBookRequest(chip=args.chip)).book
    if args.json:
        emit_json(MessageToDict(book, preserving_proto_field_name=True))
        return 0
    say(
        f"price book {book.version} ({book.currency}), in force since "
        f"{book.effective_from.ToDatetime():%Y-%m-%d}; memory share {book.memory_share}"
    )
    rows = [
        [c.chip, c.card_hour, c.busy_device_hour, c.memory_gib_hour, _basis(c.basis)]
        for c in book.cards
    ]
    say(table(["chip", "card-hour", "busy device-hour", "GiB-hour", "basis"], rows))
    return 0
