"""``pocgrid usage``: metered usage through the gateway: the API key's tenant only, or any
tenant (``--tenant``, ``--tenant '*'`` for all) with an admin key."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.meters import METERS
from pocgrid.v1 import metering_pb2

_WINDOW_RE: Final = re.compile(r"^([1-9][0-9]*)(m|h|d|w)$")
_WINDOW_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: --by -> QueryUsage group_by, and the row key naming the group.
_BY: Final = {
    "chip": (["chip"], "chip"),
    "job": (["job"], "job_id"),
    "tenant": (["tenant"], "tenant"),
    "window": (["window"], "window_start"),
    "meter": ([], ""),
}


def window(text: str) -> timedelta:
    """``15m``, ``24h``, ``30d``, ``4w``: the window that ends now."""
    match = _WINDOW_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a window: a positive whole number and m, h, d or w "
            "(15m, 24h, 30d, 4w)"
        )
    return timedelta(**{_WINDOW_UNITS[match.group(2)]: int(match.group(1))})


def register(sub: Any) -> None:
    p = sub.add_parser(
        "usage", help="metered usage (your tenant's; any tenant's with an admin key)"
    )
    p.add_argument("--by", choices=tuple(_BY), default="chip")
    p.add_argument(
        "--every",
        choices=("minute", "hour", "day", "month"),
        default="hour",
        help="window size for --by window (UTC)",
    )
    p.add_argument("--window", type=window, help="only usage that ended in the last W (15m, 24h)")
    p.add_argument("--tenant", default="", help="another tenant, or '*' for all (admin keys)")
    p.add_argument("--chip", default="", help="only this chip type")
    p.add_argument("--job", default="", help="only this job id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=usage)


def usage(args: argparse.Namespace) -> int:
    target = resolve(args)
    since: Timestamp | None = None
    if args.window is not None:
        since = Timestamp()
        since.FromDatetime(datetime.now(UTC) - args.window)
    group_by, key = _BY[args.by]
    request = metering_pb2.QueryUsageRequest(
        tenant=args.tenant,
        job_id=args.job,
        chip=args.chip,
        since=since,
        group_by=group_by,
        window_size=args.every if args.by == "window" else "",
    )
    with Client(
        target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file
    ) as pg:
        groups = pg.metering.QueryUsage(request).groups
    rows: list[dict[str, Any]]
    if args.by == "meter":
        # One group for everything; each meter's exact integer total.
        totals = groups[0].meters if groups else {}
        rows = [
            {"meter": name, "unit": str(m.unit), "quantity": int(totals.get(name, 0))}
            for name, m in METERS.items()
        ]
    else:
        rows = [
            {
                key: _key(g, key),
                "records": g.records,
                **{name: int(g.meters.get(name, 0)) for name in METERS},
            }
            for g in groups
        ]
    if args.json:
        emit_json(rows)
        return 0
    if not rows or (args.by != "meter" and not groups):
        say("no usage")
        return 0
    headers = list(rows[0])
    say(table(headers, [[row[h] for h in headers] for row in rows]))
    return 0


def _key(group: metering_pb2.UsageGroup, key: str) -> str:
    if key == "window_start":
        return group.window_start.ToDatetime(tzinfo=UTC).isoformat()
    return str(getattr(group, key))
