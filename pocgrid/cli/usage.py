"""``pocgrid usage``: the caller's metered usage through the gateway (its own tenant only)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.meters import METERS
from pocgrid.v1 import common_pb2, metering_pb2

_WINDOW_RE: Final = re.compile(r"^([1-9][0-9]*)(m|h|d)$")
_WINDOW_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days"}

AMOUNTS: Final = tuple(
    f.name for f in metering_pb2.ChipUsage.DESCRIPTOR.fields if f.name not in ("chip", "records")
)
"""The summed usage amounts, read off the contract (as services.core.usage does)."""


def window(text: str) -> timedelta:
    """``15m``, ``24h``, ``30d``: the window that ends now."""
    match = _WINDOW_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a window: a positive whole number and m, h or d (15m, 24h, 30d)"
        )
    return timedelta(**{_WINDOW_UNITS[match.group(2)]: int(match.group(1))})


def register(sub: Any) -> None:
    p = sub.add_parser("usage", help="your tenant's metered usage")
    p.add_argument("--by", choices=("chip", "job", "meter"), default="chip")
    p.add_argument("--window", type=window, help="only usage that ended in the last W (15m, 24h)")
    p.add_argument("--chip", default="", help="only this chip type")
    p.add_argument("--job", default="", help="only this job id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=usage)


def _records(pg: Client, request: metering_pb2.ListUsageRequest) -> list[metering_pb2.UsageRecord]:
    out: list[metering_pb2.UsageRecord] = []
    token = ""
    while True:
        request.page.CopyFrom(common_pb2.PageRequest(page_size=1000, page_token=token))
        resp = pg.metering.ListUsage(request)
        out.extend(resp.records)
        token = resp.page.next_page_token
        if not token:
            return out


def _group(
    records: list[metering_pb2.UsageRecord],
    key: Callable[[metering_pb2.UsageRecord], str],
    name: str,
) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault(key(r), {name: key(r), "records": 0, **dict.fromkeys(AMOUNTS, 0)})
        row["records"] += 1
        for field in AMOUNTS:
            row[field] += getattr(r, field)
    return [rows[k] for k in sorted(rows)]


def _by_meter(records: list[metering_pb2.UsageRecord]) -> list[dict[str, Any]]:
    # Each record's amount becomes whole units first, so totals are exact integer sums.
    return [
        {
            "meter": meter.name,
            "unit": str(meter.unit),
            "quantity": sum(meter.quantity(getattr(r, meter.source_field)) for r in records),
        }
        for meter in METERS.values()
    ]


def usage(args: argparse.Namespace) -> int:
    target = resolve(args)
    since: Timestamp | None = None
    if args.window is not None:
        since = Timestamp()
        since.FromDatetime(datetime.now(UTC) - args.window)
    with Client(target.gateway, target.api_key, timeout_s=args.timeout) as pg:
        if args.by == "chip" and not args.job:
            summary = pg.metering.GetUsageSummary(metering_pb2.GetUsageSummaryRequest(since=since))
            rows = [
                {"chip": c.chip, "records": c.records, **{f: getattr(c, f) for f in AMOUNTS}}
                for c in summary.by_chip
                if not args.chip or c.chip == args.chip
            ]
        else:
            records = _records(
                pg, metering_pb2.ListUsageRequest(job_id=args.job, chip=args.chip, since=since)
            )
            if args.by == "meter":
                rows = _by_meter(records)
            elif args.by == "job":
                rows = _group(records, lambda r: r.job_id, "job_id")
            else:
                rows = _group(records, lambda r: r.chip, "chip")
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        say("no usage")
        return 0
    headers = list(rows[0])
    say(table(headers, [[_cell(row[h]) for h in headers] for row in rows]))
    return 0


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
