"""NATS JetStream event bus: protobuf events with stable ids and trace context in headers.

Publishing sets ``Nats-Msg-Id`` (JetStream drops a duplicate id inside the stream's duplicate
window, so a retried publish is stored once) and W3C ``traceparent`` (so a consumer's span joins
the publisher's trace). Consumers are durable pull consumers; a message is acked only after its
handler returns, so handlers must be idempotent on the event id (redelivery is normal).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import BadRequestError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.core import telemetry
from services.core.logging import get_logger

log = get_logger()

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]


#: Every stream the mesh uses; created idempotently by whichever service connects first.
STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("POCGRID_REGISTRY", ("registry.>",)),
    StreamSpec("POCGRID_SCHEDULER", ("scheduler.>",)),
    StreamSpec("POCGRID_USAGE", ("usage.>",)),
    StreamSpec("POCGRID_EVAL", ("eval.>",)),
)

DUPLICATE_WINDOW_S = 120.0
MAX_AGE_S = 7 * 24 * 3600.0
#: How long one pull waits for messages; also how soon a consumer notices ``close()``.
FETCH_WAIT_S = 1.0
#: Bound on ``close()``: the consumers' last fetch, then the connection's drain.
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class EventMeta:
    event_id: str
    subject: str
    delivery: int


Handler = Callable[[M, EventMeta], Awaitable[None]]


class EventBus:
    def __init__(self, url: str, tracer: trace.Tracer, client_name: str) -> None:
        self._url = url
        self._tracer = tracer
        self._name = client_name
        self._nc: Any = None
        self._js: Any = None
        self._consumers: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()

    async def connect(self, timeout_s: float = 10.0) -> None:
        self._nc = await nats.connect(
            self._url,
            name=self._name,
            connect_timeout=timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            drain_timeout=int(CLOSE_TIMEOUT_S),
            error_cb=self._on_error,
        )
        self._js = self._nc.jetstream()
        await self.ensure_streams()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats.error", error=repr(exc))

    async def ensure_streams(self) -> None:
        for spec in STREAMS:
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                duplicate_window=DUPLICATE_WINDOW_S,
                max_age=MAX_AGE_S,
            )
            try:
                await self._js.add_stream(config)
            except BadRequestError:
                # Exists with a different config (an older release): bring it up to date.
                await self._js.update_stream(config)

    async def publish(self, subject: str, event: Message, event_id: str) -> None:
        with self._tracer.start_as_current_span(
            f"publish {subject}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": event_id,
            },
        ):
            headers = {"Nats-Msg-Id": event_id}
            telemetry.inject(headers)
            await self._js.publish(subject, event.SerializeToString(), headers=headers)

    def consume(
        self,
        stream: str,
        durable: str,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        batch: int = 64,
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(
            self._consume_loop(stream, durable, subject, message_type, handler, batch),
            name=f"consume:{durable}",
        )
        self._consumers.append(task)
        return task

    async def _consume_loop(
        self,
        stream: str,
        durable: str,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        batch: int,
    ) -> None:
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=20,
            filter_subject=subject,
        )
        sub = await self._js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        try:
            while not self._closing.is_set():
                try:
                    msgs = await sub.fetch(batch, timeout=FETCH_WAIT_S)
                except nats.errors.TimeoutError:
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                    return
                for msg in msgs:
                    await self._deliver(msg, message_type, handler)
        finally:
            # Unsubscribe, not drain: a pull inbox can still hold a status reply (the server's
            # "request timeout" for the last pull) that nobody will read, and a connection drain
            # waits for every subscription's queue to empty, for its whole drain_timeout.
            if not self._nc.is_closed:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _deliver(self, msg: Any, message_type: type[M], handler: Handler[M]) -> None:
        headers = dict(msg.headers or {})
        event_id = headers.get("Nats-Msg-Id", "")
        ctx = telemetry.extract(headers)
        with self._tracer.start_as_current_span(
            f"consume {msg.subject}",
            context=ctx,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.message.id": event_id,
            },
        ) as span:
            try:
                event = message_type.FromString(msg.data)
            except DecodeError:
                # A poison message is never going to decode: terminate it, don't redeliver.
                log.error("event.undecodable", subject=msg.subject, event_id=event_id)
                await msg.term()
                return
            meta = EventMeta(event_id, msg.subject, int(msg.metadata.num_delivered))
            try:
                await handler(event, meta)
            except Exception as exc:
                span.record_exception(exc)
                log.exception("event.handler_failed", subject=msg.subject, event_id=event_id)
                await msg.nak(delay=1.0)
                return
            await msg.ack()

    async def close(self) -> None:
        # Consumers finish the batch in hand and stop before their next fetch, so no handler is
        # cut off half-way; one stuck past the bound is cancelled (its message is redelivered).
        self._closing.set()
        if self._consumers:
            _, stuck = await asyncio.wait(self._consumers, timeout=FETCH_WAIT_S + CLOSE_TIMEOUT_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*self._consumers, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()
