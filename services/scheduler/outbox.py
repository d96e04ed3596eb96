"""Publishes job state events from the outbox: at once after the change commits, and again from
a periodic sweep for any whose publish failed (NATS down or slow).

A retried publish carries the same ``Nats-Msg-Id``, so JetStream stores it once inside its
duplicate window; consumers stay idempotent on the event id for anything later than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message
from opentelemetry import context as otel_context

from pocgrid.v1 import events_pb2
from services.core import telemetry
from services.core.logging import get_logger
from services.scheduler.store import JobStore, OutboxEntry

log = get_logger()

Publish = Callable[[str, Message, str], Awaitable[None]]


class EventOutbox:
    def __init__(self, store: JobStore, publish: Publish, sweep_interval_s: float) -> None:
        self._store = store
        self._publish = publish
        self._interval_s = sweep_interval_s

    async def publish(self, entry: OutboxEntry) -> bool:
        """Publish one entry and mark it; False (and left for the sweep) when publishing fails."""
        # Publish under the trace of the request that made the change, whenever this runs.
        token = otel_context.attach(telemetry.extract(entry.trace_headers))
        try:
            event = events_pb2.JobStateChanged.FromString(entry.payload)
            await self._publish(entry.subject, event, entry.event_id)
        except Exception as exc:
            log.warning(
                "event.publish_deferred",
                subject=entry.subject,
                event_id=entry.event_id,
                error=repr(exc),
            )
            return False
        finally:
            otel_context.detach(token)
        await self._store.mark_published([entry.seq], datetime.now(UTC))
        return True

    async def sweep(self) -> int:
        """Publish what is still unpublished, oldest first; stops at the first failure so
        events of one job keep their order. Returns how many were published."""
        # Entries younger than one interval are most likely being published inline right now.
        cutoff = datetime.now(UTC) - timedelta(seconds=self._interval_s)
        published = 0
        for entry in await self._store.unpublished(cutoff):
            if not await self.publish(entry):
                break
            published += 1
        if published:
            log.info("outbox.swept", published=published)
        return published

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("outbox.sweep_failed")
