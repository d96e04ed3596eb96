"""Turns ``UsageRecorded`` events from JetStream into stored usage records: a batch at a time,
one transaction per batch, acknowledged only after it commits, idempotently.

The event's ``event_id`` becomes the record's ``usage_id``: JetStream drops a retried publish
inside its duplicate window, and the primary key drops a redelivery or a re-publish after it.
An event that can never be stored (unknown tenant, a negative quantity, a field this metering
does not know, a correction of nothing) is refused with the reason: retrying will not fix it,
so the bus puts it in the dead-letter stream, where an operator sees it (``pocgrid admin dlq
list``), and the rest of its batch is stored as if it had not been there.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from operator import attrgetter, gt
from typing import Any

from google.protobuf import unknown_fields
from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.v1 import events_pb2
from services.core.bus import EventMeta
from services.core.logging import get_logger
from services.core.usage import AMOUNT_FIELDS, EVENT_TO_RECORD
from services.metering.store import USAGE_VALUES, UsageStore

log = get_logger()

MAX_ID = 160
MAX_REASON = 256
#: Column widths (tables.py): longer text could not be stored.
_TEXT_LIMITS = {"tenant": 128, "node_id": 63, "chip": 64, "job_id": 128, "model": 128}


def problem(event: events_pb2.UsageRecorded, usage_id: str, tenants: frozenset[str]) -> str:
    """Why the event cannot be stored; empty when it can. Ingest is hot: each group of
    fields is read in one C call (``attrgetter``) and tested at once (``map``, ``min``), and
    only an event that fails a test is looked at field by field, for the reason."""
    fields = unknown_fields.UnknownFieldSet(event)
    if len(fields):
        unknown = sorted({fields[i].field_number for i in range(len(fields))})
        numbers = ", ".join(f"#{n}" for n in unknown)
        return (
            f"unknown field {numbers} (a meter or field this metering does not know: its "
            "quantity would be lost; upgrade metering, then replay the dead letter)"
        )
    if not usage_id:
        return "event_id: missing; the record could not be deduplicated"
    if len(usage_id) > MAX_ID:
        return f"event_id: longer than {MAX_ID} characters"
    texts = _texts(event)
    tenant, chip = texts[0], texts[2]
    if not tenant:
        return "tenant: missing"
    if tenant not in tenants:
        return (
            f"tenant: {tenant!r} is unknown to metering (not a tenant of "
            "POCGRID_API_KEYS / POCGRID_API_KEYS_FILE)"
        )
    if not chip:
        return "chip: missing"
    if any(map(gt, map(len, texts), _LIMITS)):
        for (name, limit), value in zip(_TEXT_LIMITS.items(), texts, strict=True):
            if len(value) > limit:
                return f"{name}: longer than {limit} characters"
    if len(event.reason) > MAX_REASON:
        return f"reason: longer than {MAX_REASON} characters"
    if event.devices < 0:
        return f"devices: {event.devices} < 0"
    amounts = _amounts(event)
    if event.corrects:
        if event.corrects == usage_id:
            return "corrects: a correction cannot correct itself"
        if not any(amounts):
            return "a correction changes no quantity"
    elif min(amounts) < 0:
        for name, value in zip(AMOUNT_FIELDS, amounts, strict=True):
            if value < 0:
                return (
                    f"{name}: {value} < 0 (quantities are >= 0; to take usage back, send a "
                    "correction naming it in 'corrects')"
                )
    if event.HasField("ended_at") and event.HasField("started_at"):
        # Compared as (seconds, nanos): Timestamp.ToNanoseconds is pure Python, and slow.
        ended, started = event.ended_at, event.started_at
        if (ended.seconds, ended.nanos) < (started.seconds, started.nanos):
            return "ended_at: before started_at"
    return ""


_texts = attrgetter(*_TEXT_LIMITS)
_LIMITS = tuple(_TEXT_LIMITS.values())
_amounts = attrgetter(*AMOUNT_FIELDS)


def to_values(event: events_pb2.UsageRecorded, usage_id: str) -> tuple[Any, ...]:
    """The record's columns, straight from the event (no intermediate message or dict: ingest
    is hot), as ``USAGE_VALUES``; its times as integer microseconds since the epoch (a
    datetime per time per event cost more than the insert)."""
    fields = _event_fields(event)
    # Usage counts where it ended; an event that does not say when falls back to when it was
    # emitted (then received), never to nothing.
    if event.HasField("ended_at"):
        ended = _us(event.ended_at)
    elif event.HasField("occurred_at"):
        ended = _us(event.occurred_at)
    else:
        ended = time.time_ns() // 1000
    started = _us(event.started_at) if event.HasField("started_at") else ended
    return (
        usage_id,
        *fields[:_DEVICES],
        fields[_DEVICES] or 1,  # work that says nothing held one device
        *fields[_DEVICES + 1 :],
        started,
        ended,
    )


def to_row(event: events_pb2.UsageRecorded, usage_id: str) -> dict[str, Any]:
    """``to_values`` by column name, as ``UsageStore.record_batch`` takes corrections."""
    return dict(zip(USAGE_VALUES, to_values(event, usage_id), strict=True))


#: Every EVENT_TO_RECORD field of an event in one C call (a getattr loop costs several times it).
_event_fields = attrgetter(*EVENT_TO_RECORD)
_DEVICES = EVENT_TO_RECORD.index("devices")


def _us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


class UsageRecorder:
    def __init__(
        self,
        store: UsageStore,
        tenants: Callable[[], frozenset[str]],
        committed: Callable[[int], None] = lambda _event_us: None,
        learn: Callable[[frozenset[str]], Awaitable[frozenset[str]]] | None = None,
    ) -> None:
        self._store = store
        self._tenants = tenants
        # Told the event time (microseconds since the epoch, as the rows keep it) of the last
        # usage and the last correction of each batch it committed, the later of the two: the
        # ingest lag.
        self._committed = committed
        # Asked about tenants a batch names that are not known yet; answers every tenant known.
        self._learn = learn

    async def handle_batch(
        self, batch: Sequence[tuple[events_pb2.UsageRecorded, EventMeta]]
    ) -> list[str]:
        """Store the batch in one transaction; the reason each refused event was refused."""
        tenants = self._tenants()
        if self._learn is not None:
            unknown = frozenset(e.tenant for e, _ in batch if e.tenant and e.tenant not in tenants)
            if unknown:
                tenants = await self._learn(unknown)
        reasons = [""] * len(batch)
        rows: list[dict[str, Any]] = []  # corrections
        values: list[tuple[Any, ...]] = []  # the rest, the usual usage
        index: dict[str, int] = {}
        for i, (event, meta) in enumerate(batch):
            usage_id = event.event_id or meta.event_id
            why = problem(event, usage_id, tenants)
            if why:
                reasons[i] = f"usage event {usage_id!r} cannot be stored: {why}"
                continue
            if usage_id in index:
                continue  # the same event twice in one fetch: stored once
            index[usage_id] = i
            if event.corrects:
                rows.append(to_row(event, usage_id))
            else:
                values.append(to_values(event, usage_id))
        if rows or values:
            event_us: int = max([v[-1] for v in values[-1:]] + [r["ended_at"] for r in rows[-1:]])
            refused = await self._store.record_batch(rows, values)
            self._committed(event_us)
            for usage_id, why in refused.items():
                reasons[index[usage_id]] = f"usage event {usage_id!r} cannot be stored: {why}"
        log.debug(
            "usage.batch",
            events=len(batch),
            stored=len(rows) + len(values),
            refused=sum(map(bool, reasons)),
        )
        return reasons
