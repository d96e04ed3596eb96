"""Turns ``UsageRecorded`` events from JetStream into stored usage records, idempotently.

The event's ``event_id`` becomes the record's ``usage_id``: JetStream drops a retried publish
inside its duplicate window, and the primary key drops a redelivery or a re-publish after it.
An event that can never be stored (no tenant, negative counts) is rejected as poison: retrying
will not fix it, so the bus puts it in the dead-letter stream with the reason, where an operator
sees it (``pocgrid admin dlq list``) instead of usage vanishing from a log line.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pocgrid.v1 import events_pb2, metering_pb2
from services.core.bus import EventMeta, PoisonEvent
from services.core.logging import get_logger
from services.core.usage import COUNT_FIELDS, EVENT_TO_RECORD, QUANTITY_FIELDS, copy_fields
from services.metering.store import UsageStore

log = get_logger()

MAX_ID = 160


def problem(event: events_pb2.UsageRecorded, usage_id: str) -> str:
    """Why the event cannot be stored; empty when it can."""
    if not usage_id:
        return "no event_id: the record could not be deduplicated"
    if len(usage_id) > MAX_ID:
        return f"event_id longer than {MAX_ID} characters"
    if not event.tenant:
        return "no tenant"
    if not event.chip:
        return "no chip"
    for name in COUNT_FIELDS:
        if getattr(event, name) < 0:
            return f"{name} < 0"
    for name in QUANTITY_FIELDS:
        value = getattr(event, name)
        if not math.isfinite(value) or value < 0:
            return f"{name} must be finite and >= 0"
    if (
        event.HasField("started_at")
        and event.HasField("ended_at")
        and event.ended_at.ToDatetime() < event.started_at.ToDatetime()
    ):
        return "ended_at is before started_at"
    return ""


def to_record(event: events_pb2.UsageRecorded, usage_id: str) -> metering_pb2.UsageRecord:
    record = metering_pb2.UsageRecord(usage_id=usage_id)
    copy_fields(event, record, EVENT_TO_RECORD)
    # Usage counts where it ended; an event that does not say when falls back to when it was
    # emitted (then received), never to nothing.
    if event.HasField("ended_at"):
        record.ended_at.CopyFrom(event.ended_at)
    elif event.HasField("occurred_at"):
        record.ended_at.CopyFrom(event.occurred_at)
    else:
        record.ended_at.FromDatetime(datetime.now(UTC))
    record.started_at.CopyFrom(
        event.started_at if event.HasField("started_at") else record.ended_at
    )
    return record


class UsageRecorder:
    def __init__(self, store: UsageStore) -> None:
        self._store = store

    async def handle(self, event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        usage_id = event.event_id or meta.event_id
        why = problem(event, usage_id)
        if why:
            raise PoisonEvent(f"usage event {usage_id!r} cannot be stored: {why}")
        stored = await self._store.record(to_record(event, usage_id))
        log.debug(
            "usage.recorded" if stored else "usage.duplicate",
            usage_id=usage_id,
            tenant=event.tenant,
            chip=event.chip,
            delivery=meta.delivery,
        )
