"""Transactional outbox: an event is written in the same transaction as the state it announces,
then published by a relay, so a change is never committed without its event and never waits on
the bus.

Three parts, for any protobuf event type:

- ``outbox_table(metadata, name)`` adds an outbox table to a service's own metadata (its
  migrations create it like any other table).
- ``Outbox.add(session, ...)`` writes an event inside the caller's transaction;
  ``Outbox.emit(...)`` is the same in a transaction of its own, for a caller whose state lives
  elsewhere (an agent's finished work).
- ``OutboxRelay`` publishes what is pending: at once when told a transaction committed
  (``notify()``), and on a periodic sweep for what failed (NATS down or slow). One relay task per
  database publishes, oldest first; events of one *aggregate* (a job, a node) go out in the
  order they were written, and the first failure of an aggregate holds back its later events
  until the next pass, while other aggregates carry on.

The event id is the ``Nats-Msg-Id``: a retried publish is stored once by JetStream inside its
duplicate window, and consumers stay idempotent on it beyond that. An id must therefore name one
logical event, stable across retries and restarts, and include the attempt where a state can
recur (``job/<id>/<attempt>/<state>``). The W3C trace context of the writer is kept with the row,
so a late publish still joins the trace of the request that made the change.

One relay per database is assumed (one replica per service, as the mesh runs today): two relays
over one PostgreSQL database would each keep per-aggregate order but could interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.core import telemetry
from services.core.logging import get_logger
from services.core.storage import Database, db_operation

log = get_logger()

#: ``EventBus.publish``'s shape: subject, event, event id.
Publish = Callable[[str, Message, str], Awaitable[None]]


def outbox_table(metadata: MetaData, name: str) -> Table:
    """Add an outbox table to a service's metadata (call once, next to its other tables).

    ``name`` is ``<service>_outbox``: services that share one PostgreSQL database must not
    read each other's events.
    """
    return Table(
        name,
        metadata,
        # Write order: the publish order of each aggregate.
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(200), nullable=False, index=True),
        # What the event is about (``job/<id>``, ``node/<id>``): order holds within one.
        Column("aggregate", String(200), nullable=False),
        Column("subject", String(128), nullable=False),
        # Full protobuf name, e.g. ``pocgrid.v1.JobStateChanged``: how the relay decodes it.
        Column("event_type", String(128), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        # W3C trace context of the transaction that wrote it.
        Column("headers", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
        # Failed publishes so far (an operator's hint; order does not depend on it).
        Column("attempts", Integer, nullable=False, server_default="0"),
    )


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event to write: what it says, where it goes, and which logical event it is."""

    subject: str
    message: Message
    event_id: str
    """Stable per logical event (the ``Nats-Msg-Id``): the same on every retry and restart."""
    aggregate: str
    """What it is about (``job/<id>``): events of one aggregate are published in write order."""
    at: datetime | None = None
    """When it happened; defaults to the time of writing."""


@dataclass(frozen=True, slots=True)
class PendingEvent:
    seq: int
    event_id: str
    aggregate: str
    subject: str
    event_type: str
    payload: bytes
    headers: dict[str, str]

    def decode(self) -> Message:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(self.event_type)
        return message_factory.GetMessageClass(descriptor).FromString(self.payload)


class Outbox:
    """Writes events to one database's outbox table and reads back what is unpublished."""

    def __init__(self, db: Database, table: Table) -> None:
        self._db = db
        self.table = table

    def row(self, event: OutboxEvent) -> dict[str, Any]:
        headers: dict[str, str] = {}
        telemetry.inject(headers)
        return {
            "event_id": event.event_id,
            "aggregate": event.aggregate,
            "subject": event.subject,
            "event_type": event.message.DESCRIPTOR.full_name,
            "payload": event.message.SerializeToString(),
            "headers": headers,
            "created_at": event.at or datetime.now(UTC),
            "attempts": 0,
        }

    async def add(self, session: AsyncSession, *events: OutboxEvent) -> None:
        """Write ``events`` in the caller's transaction (``session`` must be in one). They are
        published once it commits and the caller has called ``OutboxRelay.notify()``."""
        if events:
            await session.execute(insert(self.table), [self.row(e) for e in events])

    @db_operation
    async def emit(self, *events: OutboxEvent) -> None:
        """Write ``events`` in a transaction of their own (no other state to commit with them)."""
        async with self._db.session() as session, session.begin():
            await self.add(session, *events)

    @db_operation
    async def pending(self, limit: int = 500) -> list[PendingEvent]:
        """Unpublished events, oldest first."""
        t = self.table
        async with self._db.session() as session:
            rows = await session.execute(
                select(
                    t.c.seq,
                    t.c.event_id,
                    t.c.aggregate,
                    t.c.subject,
                    t.c.event_type,
                    t.c.payload,
                    t.c.headers,
                )
                .where(t.c.published_at.is_(None))
                .order_by(t.c.seq)
                .limit(limit)
            )
            return [
                PendingEvent(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), dict(r[6] or {}))
                for r in rows
            ]

    @db_operation
    async def count_pending(self) -> int:
        t = self.table
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count()).select_from(t).where(t.c.published_at.is_(None))
            )
            return int(total or 0)

    @db_operation
    async def mark_published(self, seqs: Sequence[int], at: datetime) -> None:
        if not seqs:
            return
        t = self.table
        async with self._db.session() as session, session.begin():
            await session.execute(update(t).where(t.c.seq.in_(list(seqs))).values(published_at=at))

    @db_operation
    async def purge_published(self, before: datetime) -> int:
        """Delete events published before ``before`` (never an unpublished one); returns how
        many. JetStream deduplicates a re-publish only within its duplicate window, so an old
        published row is kept for an operator's look, not for correctness."""
        t = self.table
        async with self._db.session() as session, session.begin():
            result = await session.execute(delete(t).where(t.c.published_at < before))
        return int(getattr(result, "rowcount", 0) or 0)

    @db_operation
    async def mark_failed(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        t = self.table
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(t).where(t.c.seq.in_(list(seqs))).values(attempts=t.c.attempts + 1)
            )


class OutboxRelay:
    """Publishes an outbox's pending events through ``publish`` (``EventBus.publish``)."""

    def __init__(
        self,
        outbox: Outbox,
        publish: Publish,
        *,
        sweep_interval_s: float = 1.0,
        publish_timeout_s: float = 2.0,
        batch: int = 500,
        max_failures_per_pass: int = 3,
        ready: Callable[[], bool] | None = None,
        retain_published_s: float = 24 * 3600.0,
    ) -> None:
        self._outbox = outbox
        self._publish = publish
        self._interval_s = sweep_interval_s
        self._timeout_s = publish_timeout_s
        self._batch = batch
        # With the bus down every aggregate would fail in turn, each after a timeout: a few
        # failures end the pass instead, and the next sweep tries again.
        self._max_failures = max_failures_per_pass
        # False while the bus is known to be disconnected: a publish then would only wait out
        # its timeout, and nats-py would still send the buffered copy after reconnecting.
        self._ready = ready
        self._retain_s = retain_published_s
        self._next_purge = 0.0  # time.monotonic() of the next purge of published rows
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()
        self.last_pass_failed = False

    def notify(self) -> None:
        """Events were committed: publish them soon (never waits, never raises)."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """One pass over what is pending; returns how many events were published."""
        async with self._pass:
            if self._ready is not None and not self._ready():
                self.last_pass_failed = True
                return 0
            published = 0
            while True:
                done, failed, more = await self._one_batch()
                published += done
                if failed or not more:
                    self.last_pass_failed = failed
                    break
            if published:
                log.info("outbox.published", events=published)
            return published

    async def _one_batch(self) -> tuple[int, bool, bool]:
        entries = await self._outbox.pending(self._batch)
        blocked: set[str] = set()
        done: list[int] = []
        failed: list[int] = []
        try:
            for entry in entries:
                _raise_if_cancelling()
                if entry.aggregate in blocked:
                    continue
                if await self._publish_one(entry):
                    done.append(entry.seq)
                    continue
                blocked.add(entry.aggregate)
                failed.append(entry.seq)
                if len(failed) >= self._max_failures:
                    break
        finally:
            await self._outbox.mark_published(done, datetime.now(UTC))
            await self._outbox.mark_failed(failed)
        return len(done), bool(failed), len(entries) == self._batch

    async def _publish_one(self, entry: PendingEvent) -> bool:
        # Publish under the trace of the transaction that wrote it, whenever this runs.
        token = otel_context.attach(telemetry.extract(entry.headers))
        try:
            event = entry.decode()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
            # stops the service when the publish completes at the same moment, and the relay
            # would then never end.
            async with asyncio.timeout(self._timeout_s):
                await self._publish(entry.subject, event, entry.event_id)
        except Exception as exc:
            log.warning(
                "outbox.publish_deferred",
                subject=entry.subject,
                event_id=entry.event_id,
                aggregate=entry.aggregate,
                error=repr(exc),
            )
            return False
        finally:
            otel_context.detach(token)
        return True

    async def run(self) -> None:
        """The relay task: a pass when notified, and a sweep every interval; after a failed
        pass it waits one interval before the next, however often it is notified."""
        while True:
            _raise_if_cancelling()
            self._wake.clear()
            try:
                await self.publish_pending()
                await self._purge_now_and_then()
            except Exception:
                self.last_pass_failed = True
                log.exception("outbox.pass_failed")
            if self.last_pass_failed:
                await asyncio.sleep(self._interval_s)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()

    async def _purge_now_and_then(self) -> None:
        # Published rows would otherwise pile up for ever; once a minute is plenty.
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + min(60.0, self._retain_s)
        cutoff = datetime.now(UTC) - timedelta(seconds=self._retain_s)
        purged = await self._outbox.purge_published(cutoff)
        if purged:
            log.info("outbox.purged", events=purged)


def _raise_if_cancelling() -> None:
    # On Python 3.11 an ``asyncio.wait_for`` deep inside a publish (nats-py's request) returns
    # the result instead of raising when the cancellation that stops the service lands just as
    # the publish completes; the cancellation is then lost, but the task still counts it.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
