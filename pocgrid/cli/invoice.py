"""``pocgrid invoice``: a month's invoice through the gateway (draft or final), its lines by chip,
meter and price-book version, and what renting whole cards for the time held would have cost."""

from __future__ import annotations

import argparse
import html
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.v1 import metering_pb2


def register(sub: Any) -> None:
    p = sub.add_parser("invoice", help="a month's invoice (draft until its grace period ends)")
    p.add_argument("--period", default="", help="YYYY-MM (default: this month)")
    p.add_argument("--tenant", default="", help="another tenant's (admin keys only)")
    p.add_argument("--list", action="store_true", help="every invoice, without lines")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE", help="also write the invoice as one HTML file")
    p.set_defaults(func=invoice)


def _status(value: metering_pb2.InvoiceStatus.ValueType) -> str:
    return metering_pb2.InvoiceStatus.Name(value).removeprefix("INVOICE_STATUS_").lower()


def _held(us: int) -> str:
    return f"{us / 3_600_000_000:.4f} h"


def invoice(args: argparse.Namespace) -> int:
    target = resolve(args)
    with Client(
        target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file
    ) as pg:
        if args.list:
            listed = pg.metering.ListInvoices(
                metering_pb2.ListInvoicesRequest(tenant=args.tenant)
            ).invoices
            if args.json:
                emit_json([MessageToDict(i, preserving_proto_field_name=True) for i in listed])
                return 0
            say(
                table(
                    ["invoice", "status", "records", "total", "rental", "saving"],
                    [
                        [
                            i.invoice_id,
                            _status(i.status),
                            i.records,
                            i.total,
                            i.rental_total,
                            i.saving,
                        ]
                        for i in listed
                    ],
                )
            )
            return 0
        inv = pg.metering.GetInvoice(
            metering_pb2.GetInvoiceRequest(period=args.period, tenant=args.tenant)
        ).invoice
    if args.html:
        Path(args.html).write_text(render_html(inv), encoding="utf-8")
    if args.json:
        emit_json(MessageToDict(inv, preserving_proto_field_name=True))
        return 0
    final = f"{inv.final_at.ToDatetime():%Y-%m-%d %H:%M} UTC"
    say(
        f"invoice {inv.invoice_id} ({_status(inv.status)}; "
        f"{'final since' if inv.status == metering_pb2.INVOICE_STATUS_FINAL else 'final at'} "
        f"{final}), {inv.records} usage records, price books {', '.join(inv.price_versions)}"
    )
    say(table(*_lines(inv)))
    say(f"total {inv.total} {inv.currency}")
    say(
        f"renting whole cards for the time held: {inv.rental_total} {inv.currency} "
        f"(saving {inv.saving})"
    )
    return 0


def _lines(inv: metering_pb2.Invoice) -> tuple[list[str], list[list[Any]]]:
    headers = ["chip", "meter", "quantity", "unit", "amount", "price book", "adjusts", "records"]
    rows = [
        [
            line.chip,
            line.meter,
            line.quantity,
            line.unit,
            line.amount,
            # Usage older than every price book, priced by the earliest (invoicing.py).
            f"{line.price_version} (before its start)"
            if line.before_first_book
            else line.price_version,
            line.adjustment_for,
            line.records,
        ]
        for line in inv.lines
    ]
    return headers, rows


def render_html(inv: metering_pb2.Invoice) -> str:
    """The invoice as one self-contained HTML page (no scripts, no external resources)."""

    def rows(cells: list[list[Any]]) -> str:
        return "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in cells
        )

    headers, lines = _lines(inv)
    rental_headers = ["job", "chip", "cards", "held", "card-hour", "cost"]
    rental = [
        [r.job_id, r.chip, r.cards, _held(r.held_us), r.card_hour, r.cost] for r in inv.rental
    ]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rental_head = "".join(f"<th>{html.escape(h)}</th>" for h in rental_headers)
    title = html.escape(f"Invoice {inv.invoice_id}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style>
</head><body>
<h1>{title}</h1>
<p>Status: <b>{html.escape(_status(inv.status))}</b>; {inv.records} usage records;
price books: {html.escape(", ".join(inv.price_versions))}.</p>
<table><thead><tr>{head}</tr></thead><tbody>{rows(lines)}</tbody></table>
<p>Total: <b id="total">{html.escape(inv.total)} {html.escape(inv.currency)}</b></p>
<h2>Renting whole cards for the time held</h2>
<table><thead><tr>{rental_head}</tr></thead><tbody>{rows(rental)}</tbody></table>
<p>Rental: <b id="rental">{html.escape(inv.rental_total)} {html.escape(inv.currency)}</b>;
paying for consumption saved <b id="saving">{html.escape(inv.saving)}</b>.</p>
</body></html>
"""
