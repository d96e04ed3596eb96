"""NATS JetStream event bus: protobuf events with stable ids and trace context in headers.

Publishing sets ``Nats-Msg-Id`` (JetStream drops a duplicate id inside the stream's duplicate
window, so a retried publish is stored once) and W3C ``traceparent`` (so a consumer's span joins
the publisher's trace). Consumers are durable pull consumers; a message is acked only after its
handler returns, so handlers must be idempotent on the event id (redelivery is normal).

Consumers are supervised: nothing but ``close()`` ends a consume loop. Any error (a failed pull,
a lost connection, a deleted consumer, a failed ack) is logged, followed by an exponential
back-off (``consumer_backoff_*``) and a fresh subscription. After ``consumer_unhealthy_after``
consecutive failures the consumer reports itself unhealthy through ``health()``, which the service
turns into gRPC health NOT_SERVING; the next good pull reports it healthy again.

An event the handler cannot take goes to the dead-letter stream (``pocgrid.deadletter``) and is
terminated, so one bad event never blocks the ones behind it: at once when it does not decode or
the handler raises ``PoisonEvent``, and after ``consumer_max_deliver`` deliveries when the handler
keeps failing. The server itself is told to redeliver forever, so an event whose dead-lettering
failed (NATS down) comes back and is dead-lettered then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import nats
from google.protobuf.message import DecodeError, Message
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from pocgrid import deadletter
from pocgrid.natsclient import NatsCredentialsError, connect_options
from services.core import telemetry
from services.core.audit import AUDIT_MAX_AGE_S, AUDIT_STREAM, AUDIT_SUBJECTS
from services.core.config import CommonConfig, ConfigError, env_name
from services.core.logging import get_logger
from services.core.nats_auth import IDENTITIES, NatsIdentity

log = get_logger()

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float = 7 * 24 * 3600.0


#: Every stream the mesh uses; created idempotently by whichever service connects first.
STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("POCGRID_REGISTRY", ("registry.>",)),
    StreamSpec("POCGRID_SCHEDULER", ("scheduler.>",)),
    StreamSpec("POCGRID_USAGE", ("usage.>",)),
    StreamSpec("POCGRID_EVAL", ("eval.>",)),
    StreamSpec(AUDIT_STREAM, (AUDIT_SUBJECTS,), AUDIT_MAX_AGE_S),
    StreamSpec(deadletter.DLQ_STREAM, (deadletter.DLQ_SUBJECTS,), deadletter.DLQ_MAX_AGE_S),
)

DUPLICATE_WINDOW_S = 120.0
#: Bound on ``close()``: the consumers' last fetch, then the connection's drain.
CLOSE_TIMEOUT_S = 5.0

#: Replicas of one batch consumer's durable whose pipelines fit in its ack-pending room.
PIPELINED_REPLICAS = 4

#: Links from a batch's span to its publishers' spans: the SDK keeps 128 by default anyway.
MAX_BATCH_LINKS = 128

#: gRPC health name of the bus as a whole: the NATS connection and every consumer.
BUS_HEALTH = "pocgrid.bus"


def consumer_health_name(durable: str) -> str:
    """gRPC health name of one consumer."""
    return f"{BUS_HEALTH}.consumer.{durable}"


class PoisonEvent(Exception):
    """Raised by a handler for an event no retry will fix: it is dead-lettered at once."""


class BusDisconnected(ConnectionError):
    """The NATS connection is down (the client keeps reconnecting)."""


@dataclass(frozen=True, slots=True)
class EventMeta:
    event_id: str
    subject: str
    delivery: int


Handler = Callable[[M, EventMeta], Awaitable[None]]
#: Takes every event of one fetch and commits them together; returns, per event, the reason it
#: was refused (dead-lettered) or "" for stored. Raising means nothing was stored.
BatchHandler = Callable[[Sequence[tuple[M, EventMeta]]], Awaitable[Sequence[str]]]
HealthListener = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class ConsumerState:
    durable: str
    healthy: bool = True
    failures: int = 0
    last_error: str = ""
    essential: bool = True
    """False: the service goes on doing its job while this consumer fails (its events wait in
    the stream), so its failures show under ``pocgrid.bus`` but never make the service
    NOT_SERVING."""


@dataclass(frozen=True, slots=True)
class _Consumer:
    stream: str
    durable: str
    subject: str
    message_type: type[Message]
    handler: Handler[Any] | BatchHandler[Any]
    batch: int
    batched: bool = False
    essential: bool = True


class EventBus:
    def __init__(
        self,
        url: str,
        tracer: trace.Tracer,
        client_name: str,
        config: CommonConfig | None = None,
        *,
        on_health_change: HealthListener | None = None,
    ) -> None:
        self._url = url
        self._tracer = tracer
        self._name = client_name
        self._config = config if config is not None else CommonConfig()
        self._on_health_change = on_health_change
        #: With credentials: what this identity may do; it creates only the streams it owns.
        self._identity: NatsIdentity | None = (
            IDENTITIES[self._config.nats_user] if self._config.nats_user else None
        )
        self._nc: Any = None
        self._js: Any = None
        self._consumers: list[asyncio.Task[None]] = []
        self._states: dict[str, ConsumerState] = {}
        self._streams: dict[str, str] = {}  # durable -> its stream
        self._closing = asyncio.Event()
        #: Set (and replaced) on reconnect, so consumers in back-off retry at once.
        self._wake = asyncio.Event()
        #: Changes on every disconnect and reconnect: a subscriber may have missed broadcasts
        #: (``subscribe``) in between, so what it derived from them before is suspect.
        self.connection_changes = 0

    # -- connection -----------------------------------------------------------------------
    def _credentials(self) -> dict[str, Any]:
        try:
            # The inbox prefix is the identity's one subscribe permission (nats_auth).
            return connect_options(
                self._config.nats_user,
                self._config.nats_password_file,
                what=env_name("nats_password_file"),
            )
        except NatsCredentialsError as exc:
            raise ConfigError(str(exc)) from None

    async def connect(self, timeout_s: float = 10.0) -> None:
        self._nc = await nats.connect(
            self._url,
            name=self._name,
            **self._credentials(),
            connect_timeout=timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            # A server that stops answering (hung, partitioned) is noticed within about two
            # intervals, not nats-py's default four minutes.
            ping_interval=max(1, round(self._config.nats_ping_interval_s)),
            max_outstanding_pings=2,
            drain_timeout=int(CLOSE_TIMEOUT_S),
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream()
        await self.ensure_streams()
        await self._notify()

    @property
    def connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats.error", error=repr(exc))

    async def _on_disconnected(self) -> None:
        self.connection_changes += 1
        if not self._closing.is_set():
            log.warning("nats.disconnected", url=self._url)
        await self._notify()

    async def _on_reconnected(self) -> None:
        self.connection_changes += 1
        log.info("nats.reconnected", url=self._url)
        self._wake.set()
        self._wake = asyncio.Event()
        # A server that came back empty has lost the streams; publishers need them too.
        try:
            await self.ensure_streams()
        except Exception as exc:
            log.warning("nats.ensure_streams_failed", error=repr(exc))
        await self._notify()

    async def ensure_streams(self) -> None:
        owned = None if self._identity is None else set(self._identity.owns)
        for spec in STREAMS:
            if owned is not None and spec.name not in owned:
                continue  # another identity's stream: this one may not create or change it
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                duplicate_window=DUPLICATE_WINDOW_S,
                max_age=spec.max_age_s,
                # 3 on a 3-node JetStream cluster (deploy/k8s), so a stream survives a lost
                # server; 1 on the single local nats-server.
                num_replicas=self._config.stream_replicas,
            )
            try:
                await self._js.add_stream(config)
            except BadRequestError:
                # Exists with a different config (an older release): bring it up to date.
                await self._js.update_stream(config)

    # -- health ---------------------------------------------------------------------------
    def health(self) -> dict[str, bool]:
        """Health name -> serving, for the bus as a whole and each consumer."""
        parts = {consumer_health_name(d): s.healthy for d, s in self._states.items()}
        parts[BUS_HEALTH] = self.connected and all(parts.values())
        return parts

    @property
    def consumers_healthy(self) -> bool:
        """Every essential consumer is healthy (what the service's own health follows)."""
        return all(s.healthy for s in self._states.values() if s.essential)

    def consumer_states(self) -> list[ConsumerState]:
        return list(self._states.values())

    async def backlog(self) -> dict[str, int]:
        """Events each of this bus's durable consumers has yet to finish, by durable: those the
        server holds for it (``num_pending``) and those delivered but not acknowledged
        (``num_ack_pending``). Asks the server; raises while NATS is away."""
        backlog: dict[str, int] = {}
        for durable, stream in self._streams.items():
            try:
                info = await self._js.consumer_info(stream, durable)
            except NotFoundError:
                continue  # not subscribed yet (or deleted and being re-made): nothing to say
            backlog[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return backlog

    async def _notify(self) -> None:
        if self._on_health_change is None:
            return
        try:
            await self._on_health_change()
        except Exception as exc:
            log.warning("bus.health_listener_failed", error=repr(exc))

    # -- publishing -----------------------------------------------------------------------
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
            headers = {deadletter.MSG_ID: event_id}
            telemetry.inject(headers)
            await self._js.publish(subject, event.SerializeToString(), headers=headers)

    # -- consuming ------------------------------------------------------------------------
    async def subscribe(
        self, subject: str, message_type: type[M], handler: Callable[[M], Awaitable[None] | None]
    ) -> None:
        """Hear every event on ``subject`` as it is published, on this connection only (a core
        NATS subscription to the stream's subject: no durable state, nothing acked, nothing
        replayed). For caches that every replica keeps (the gateways' API keys): each must hear
        every event, and one that missed some (``connection_changes``) resynchronises itself.
        """

        async def deliver(msg: Any) -> None:
            try:
                event = message_type.FromString(msg.data)
            except DecodeError as exc:
                log.error("event.undecodable", subject=msg.subject, error=repr(exc))
                return
            try:
                result = handler(event)
                if isinstance(result, Awaitable):
                    await result
            except Exception:
                log.exception("event.subscriber_failed", subject=msg.subject)

        await self._nc.subscribe(subject, cb=deliver)

    def consume(
        self,
        stream: str,
        durable: str,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        batch: int | None = None,
    ) -> asyncio.Task[None]:
        """Start a supervised durable pull consumer; it runs until ``close()``."""
        return self._start(
            _Consumer(
                stream,
                durable,
                subject,
                message_type,
                handler,
                batch if batch is not None else self._config.consumer_batch,
            )
        )

    def consume_batch(
        self,
        stream: str,
        durable: str,
        subject: str,
        message_type: type[M],
        handler: BatchHandler[M],
        *,
        batch: int | None = None,
        essential: bool = True,
    ) -> asyncio.Task[None]:
        """Start a supervised durable pull consumer whose handler takes a whole fetch at once.

        Commit, then ack: the handler stores the fetch's decodable events (one transaction)
        and returns why it refused any; the refused are dead-lettered with that reason and the
        rest acked. Pipelined: the next fetch is made while the handler commits, and its events
        go to the handler (and are acked) only after this batch is done; the durable allows
        ``2 * batch`` unacknowledged messages for that. A fetch made ahead that will not be
        handled (the bus closes, the consumer starts over) is nakked, so it is redelivered at
        once, never acked. If the handler raises, nothing was stored: each event is then handled
        alone, so one event that breaks the transaction costs only itself (it is retried, and
        dead-lettered after ``consumer_max_deliver`` deliveries) and the others are stored.
        """
        return self._start(
            _Consumer(
                stream,
                durable,
                subject,
                message_type,
                handler,
                batch if batch is not None else self._config.consumer_batch,
                batched=True,
                essential=essential,
            )
        )

    def _start(self, spec: _Consumer) -> asyncio.Task[None]:
        allowed = None if self._identity is None else self._identity.consumes
        if allowed is not None and (spec.stream, spec.durable) not in {
            (d.stream, d.name) for d in allowed
        }:
            # Refused here, at start-up, rather than by the server as a silent timeout.
            raise ConfigError(
                f"consumer {spec.durable!r} on {spec.stream}: NATS identity "
                f"{self._config.nats_user!r} may not run it; add it to "
                "services/core/nats_auth.py IDENTITIES"
            )
        if spec.durable in self._states:
            raise ValueError(f"consumer {spec.durable!r} is already running on this bus")
        self._states[spec.durable] = ConsumerState(spec.durable, essential=spec.essential)
        self._streams[spec.durable] = spec.stream
        task = asyncio.create_task(self._supervise(spec), name=f"consume:{spec.durable}")
        self._consumers.append(task)
        return task

    async def _supervise(self, spec: _Consumer) -> None:
        state = self._states[spec.durable]
        sub: Any = None
        checked = 0.0
        # A batch consumer's next fetch, started as the batch in hand goes to its handler, so
        # the round trips to nats-server overlap the handler's commit (ingest pipelining). Its
        # messages are only handled, and acked, after the batch before them is done.
        ahead: asyncio.Task[list[Any]] | None = None
        await self._notify()  # its health name exists from now on
        try:
            while not self._closing.is_set():
                try:
                    if not self.connected:
                        raise BusDisconnected("NATS connection is down")
                    if sub is None:
                        sub = await self._subscribe(spec)
                        checked = time.monotonic()
                    if ahead is not None:
                        msgs, ahead = await ahead, None
                    else:
                        msgs = await self._pull(sub, spec)
                    idle_for = time.monotonic() - checked
                    if not msgs and idle_for > self._config.consumer_check_interval_s:
                        # Raises NotFoundError for a deleted durable: re-subscribe re-creates it.
                        await self._js.consumer_info(spec.stream, spec.durable)
                        checked = time.monotonic()
                    await self._succeeded(state)
                    if spec.batched and msgs:
                        if not self._closing.is_set():
                            ahead = asyncio.create_task(self._pull(sub, spec))
                        await self._deliver_batch(msgs, spec)
                    for msg in msgs if not spec.batched else ():
                        await self._deliver(msg, spec)
                except Exception as exc:  # supervision: only close() ends the loop
                    await _give_back(ahead)
                    ahead = None
                    if self._closing.is_set():
                        break
                    await self._unsubscribe(sub)
                    sub = None
                    await self._failed(state, exc)
                    await self._pause(self._config.consumer_backoff_s(state.failures))
        finally:
            await _give_back(ahead)
            await self._unsubscribe(sub)

    async def _pause(self, delay_s: float) -> None:
        """Back off for ``delay_s``, or less if the bus closes or reconnects meanwhile."""
        waiters = [
            asyncio.ensure_future(self._closing.wait()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _subscribe(self, spec: _Consumer) -> Any:
        await self.ensure_streams()
        config = ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._config.consumer_ack_wait_s,
            deliver_policy=DeliverPolicy.ALL,
            # Unbounded on the server: the consumer counts deliveries itself and dead-letters,
            # which the server's own limit would not (it just stops delivering).
            max_deliver=-1,
            filter_subject=spec.subject,
            # A batch consumer holds its batch unacked while it commits and fetches the next
            # meanwhile: room for both, or the server (default 1000) would hold the next back
            # until the first is acked. The room is shared by every replica of the durable,
            # so it is made for PIPELINED_REPLICAS of them (with room for one only, two
            # metering replicas each waited for the other's ack); what a replica holds is
            # bounded by its own fetches (two batches), not by this.
            max_ack_pending=PIPELINED_REPLICAS * 2 * spec.batch if spec.batched else None,
        )
        try:
            await self._js.add_consumer(spec.stream, config)
        except BadRequestError as exc:
            # An existing durable whose settings this server will not change in place.
            log.warning("consumer.config_kept", consumer=spec.durable, error=repr(exc))
        puller = PullBatcher(self._nc, spec.stream, spec.durable)
        await puller.start()
        return puller

    async def _pull(self, sub: Any, spec: _Consumer) -> list[Any]:
        try:
            wait_s = self._config.consumer_fetch_wait_s
            msgs: list[Any] = await sub.fetch(spec.batch, wait_s)
        except TimeoutError:
            # The server did not answer a pull: an idle consumer if the connection is up, a
            # failure if it went away.
            if not self.connected:
                raise BusDisconnected("NATS connection is down") from None
            return []
        return msgs

    async def _unsubscribe(self, sub: Any) -> None:
        # Unsubscribe, not drain: a pull inbox can still hold a status reply (the server's
        # "request timeout" for the last pull) that nobody will read, and a connection drain
        # waits for every subscription's queue to empty, for its whole drain_timeout.
        if sub is not None and self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _succeeded(self, state: ConsumerState) -> None:
        if state.failures:
            log.info("consumer.recovered", consumer=state.durable, after_failures=state.failures)
        state.failures = 0
        state.last_error = ""
        if not state.healthy:
            state.healthy = True
            await self._notify()

    async def _failed(self, state: ConsumerState, exc: Exception) -> None:
        state.failures += 1
        state.last_error = repr(exc)
        log.warning(
            "consumer.failed",
            consumer=state.durable,
            failures=state.failures,
            retry_in_s=self._config.consumer_backoff_s(state.failures),
            error=state.last_error,
        )
        if state.healthy and state.failures >= self._config.consumer_unhealthy_after:
            state.healthy = False
            log.error(
                "consumer.unhealthy",
                consumer=state.durable,
                failures=state.failures,
                error=state.last_error,
            )
            await self._notify()

    async def _deliver(self, msg: Any, spec: _Consumer) -> None:
        headers = _headers(msg)
        event_id = deadletter.event_id(headers)
        deliveries = delivery_count(msg)
        max_deliver = self._config.consumer_max_deliver
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
            event = await self._admit(msg, spec, headers, deliveries)
            if event is None:
                return
            meta = EventMeta(event_id, msg.subject, deliveries)
            try:
                if spec.batched:
                    # A batch consumer's handler, given one event (a batch that failed whole).
                    batch_handler = cast(BatchHandler[Any], spec.handler)
                    (why,) = await batch_handler([(event, meta)])
                    if why:
                        raise PoisonEvent(why)
                else:
                    await cast(Handler[Any], spec.handler)(event, meta)
            except PoisonEvent as exc:
                await self._dead_letter(msg, spec, headers, f"rejected by the handler: {exc}")
                return
            except Exception as exc:
                span.record_exception(exc)
                if deliveries >= max_deliver:
                    await self._dead_letter(
                        msg,
                        spec,
                        headers,
                        f"handler failed on delivery {deliveries} of {max_deliver}: {exc!r}",
                    )
                    return
                log.exception(
                    "event.handler_failed",
                    subject=msg.subject,
                    event_id=event_id,
                    delivery=deliveries,
                )
                await msg.nak(delay=self._config.consumer_backoff_s(deliveries))
                return
            await msg.ack()

    async def _admit(
        self, msg: Any, spec: _Consumer, headers: Mapping[str, str], deliveries: int
    ) -> Message | None:
        """The decoded event, or None once the message is dead-lettered: delivered too often
        (earlier deliveries were never acked or nakked: the handler hung past the ack wait or
        its process died with it in hand) or undecodable. One rule for both delivery paths."""
        max_deliver = self._config.consumer_max_deliver
        if deliveries > max_deliver:
            why = f"not acked in {deliveries - 1} deliveries (max {max_deliver})"
            await self._dead_letter(msg, spec, headers, why)
            return None
        try:
            return spec.message_type.FromString(msg.data)
        except DecodeError as exc:
            await self._dead_letter(
                msg, spec, headers, f"undecodable as {spec.message_type.__name__}: {exc}"
            )
            return None

    async def _deliver_batch(self, msgs: list[Any], spec: _Consumer) -> None:
        taken: list[tuple[Any, Mapping[str, str], Message, EventMeta]] = []
        links: list[Link] = []
        # The first event of each trace in the batch, and how many events that trace has.
        traces: dict[int, tuple[trace.SpanContext, int]] = {}
        max_deliver = self._config.consumer_max_deliver
        decode = spec.message_type.FromString
        for msg in msgs:
            headers = _headers(msg)
            deliveries = delivery_count(msg)
            # The usual event, decoded here: a coroutine per message (_admit) cost more than
            # the decode. One delivered too often or undecodable goes through _admit, which
            # dead-letters it with the reason.
            event: Message | None = None
            if deliveries <= max_deliver:
                with contextlib.suppress(DecodeError):
                    event = decode(msg.data)
            if event is None:
                event = await self._admit(msg, spec, headers, deliveries)
            if event is None:
                continue
            meta = EventMeta(deadletter.event_id(headers), msg.subject, deliveries)
            taken.append((msg, headers, event, meta))
            if len(links) < MAX_BATCH_LINKS and "traceparent" in headers:
                parent = trace.get_current_span(telemetry.extract(headers)).get_span_context()
                if parent.is_valid:
                    links.append(Link(parent))
                    first, count = traces.get(parent.trace_id, (parent, 0))
                    traces[parent.trace_id] = (first, count + 1)
        if not taken:
            return
        # One span for the batch, linked to each publisher's span (messaging batch receive).
        with self._tracer.start_as_current_span(
            f"consume {spec.subject} batch",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": spec.subject,
                "messaging.batch.message_count": len(taken),
            },
        ) as span:
            try:
                handler = cast(BatchHandler[Any], spec.handler)
                reasons = await handler([(event, meta) for _, _, event, meta in taken])
            except Exception as exc:
                span.record_exception(exc)
                log.warning(
                    "event.batch_failed", consumer=spec.durable, events=len(taken), error=repr(exc)
                )
                for msg, _, _, _ in taken:
                    await self._deliver(msg, spec)
                return
            if len(reasons) != len(taken):
                raise RuntimeError(f"batch handler answered {len(reasons)} of {len(taken)}")
            for (msg, headers, _, _), why in zip(taken, reasons, strict=True):
                if why:
                    await self._dead_letter(msg, spec, headers, f"rejected by the handler: {why}")
                else:
                    await msg.ack()
        self._processed_spans(spec, span, traces)

    def _processed_spans(
        self, spec: _Consumer, batch: trace.Span, traces: dict[int, tuple[trace.SpanContext, int]]
    ) -> None:
        """One short span per trace the batch carried, child of that trace's first event and
        linked to the batch span: the batch span cannot be in every publisher's trace, and a
        trace (one evaluation, say) should show that its events were consumed. Per trace, not
        per event, so a batch of a thousand costs at most ``MAX_BATCH_LINKS`` spans, and none
        when the publishers sent no trace context."""
        # The SDK's span keeps its times once ended; a non-recording one has none.
        start = getattr(batch, "start_time", None)
        end = getattr(batch, "end_time", None)
        if not traces or end is None:
            return
        for first, count in traces.values():
            self._tracer.start_span(
                f"process {spec.subject}",
                context=trace.set_span_in_context(trace.NonRecordingSpan(first)),
                kind=SpanKind.CONSUMER,
                links=[Link(batch.get_span_context())],
                start_time=start,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": spec.subject,
                    "messaging.batch.message_count": count,
                    "messaging.consumer.group.name": spec.durable,
                },
            ).end(end_time=end)

    async def _dead_letter(
        self, msg: Any, spec: _Consumer, headers: Mapping[str, str], reason: str
    ) -> None:
        stream_seq = int(msg.metadata.sequence.stream)
        dlq_headers = deadletter.dead_letter_headers(
            headers,
            reason=reason,
            subject=msg.subject,
            stream=str(msg.metadata.stream or spec.stream),
            stream_seq=stream_seq,
            consumer=spec.durable,
            deliveries=int(msg.metadata.num_delivered),
            dead_at=datetime.now(UTC),
        )
        await self._js.publish(
            deadletter.dead_letter_subject(spec.durable, msg.subject),
            msg.data,
            headers=dlq_headers,
        )
        # Only once the dead letter is stored: if publishing failed the event is redelivered.
        await msg.term()
        log.error(
            "event.dead_lettered",
            consumer=spec.durable,
            subject=msg.subject,
            event_id=dlq_headers[deadletter.ORIGINAL_EVENT_ID],
            stream_seq=stream_seq,
            reason=reason,
        )

    # -- shutdown -------------------------------------------------------------------------
    async def close(self) -> None:
        # Consumers finish the batch in hand and stop before their next fetch, so no handler is
        # cut off half-way; one stuck past the bound is cancelled (its message is redelivered).
        self._closing.set()
        if self._consumers:
            _, stuck = await asyncio.wait(
                self._consumers, timeout=self._config.consumer_fetch_wait_s + CLOSE_TIMEOUT_S
            )
            for task in stuck:
                task.cancel()
            await asyncio.gather(*self._consumers, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()


async def _give_back(ahead: asyncio.Task[list[Any]] | None) -> None:
    """End a fetch made ahead that will not be handled (the consumer stops or starts over):
    messages it took are nakked, so they are redelivered now rather than after the ack wait,
    to this consumer or another replica. Never acked: they were not committed."""
    if ahead is None:
        return
    if not ahead.done():
        ahead.cancel()
    # wait(), not await: the fetch's own cancellation or failure is no error here, while this
    # task's cancellation still propagates.
    await asyncio.wait({ahead})
    if ahead.cancelled() or ahead.exception() is not None:
        return
    for msg in ahead.result():
        with contextlib.suppress(Exception):
            await msg.nak()


class PullBatcher:
    """A durable pull consumer's fetch: pull requests on one callback subscription, messages
    collected as they arrive.

    nats-py's ``PullSubscription.fetch`` awaits each message in a task of its own with a timer
    of its own: about 50 µs of CPU per message on this machine, more than decoding, validating,
    storing and acking the event together. Here a message costs a callback, and a fetch is at
    most two pull requests: one that takes what the stream holds now (``no_wait``), and, only
    when that was nothing, one that waits up to ``wait_s`` for the next message (a batch of
    one, so the request is used up when it returns and nothing lingers on the server; the
    following fetch takes whatever came meanwhile at once).

    A message that arrives after its fetch gave up (a request answered late) is kept for the
    next fetch, never dropped: it is delivered to this consumer and would otherwise wait out the
    ack wait. A request's end (404 no messages, 408 expired, 409 conflict) is told apart from an
    earlier request's by its reply subject; any other status fails the fetch.
    """

    def __init__(self, nc: Any, stream: str, durable: str) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox: str = nc.new_inbox()
        self._sub: Any = None
        self._msgs: list[Any] = []
        self._want = 0
        self._seq = 0
        self._request = ""
        self._done: asyncio.Future[None] | None = None
        self._error: Exception | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, batch: int, wait_s: float) -> list[Any]:
        """Up to ``batch`` messages; [] when none came within ``wait_s``. Raises TimeoutError
        when the server did not answer at all (a lost connection)."""
        if len(self._msgs) < batch:
            await self._pull(batch - len(self._msgs), None, wait_s)
            if not self._msgs:
                await self._pull(1, wait_s, wait_s)
        taken, self._msgs = self._msgs[:batch], self._msgs[batch:]
        return taken

    async def _pull(self, n: int, expires_s: float | None, wait_s: float) -> None:
        self._seq += 1
        self._request = f"{self._inbox}.{self._seq}"
        self._want = len(self._msgs) + n
        self._error = None
        self._done = asyncio.get_running_loop().create_future()
        body: dict[str, Any] = {"batch": n}
        if expires_s is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires_s * 1e9)
        try:
            await self._nc.publish(self._next, json.dumps(body).encode(), reply=self._request)
            # The server ends the request by itself (filled, nothing there, expired); the
            # margin is for its answer to arrive.
            await asyncio.wait_for(self._done, (expires_s or 0.0) + wait_s)
        finally:
            self._done = None
        if self._error is not None:
            raise self._error

    async def _on_message(self, msg: Any) -> None:
        # JetStream delivers events with an ack reply subject; statuses come without one.
        status = msg.headers.get("Status") if msg.headers and not msg.reply else None
        if status is None:
            self._msgs.append(msg)
            if len(self._msgs) >= self._want:
                self._finish()
        elif msg.subject == self._request and status != "100":  # 100: idle heartbeat
            if status not in ("404", "408", "409"):
                self._error = RuntimeError(
                    f"pull request failed: {status} {msg.headers.get('Description', '')}"
                )
            self._finish()

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


def delivery_count(msg: Any) -> int:
    """How often JetStream has delivered ``msg``, read from its ack subject: nats-py's
    ``msg.metadata`` builds every field of it (dataclasses, a datetime) at about 20 µs a
    message, and only this one is needed on the hot path."""
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (9 tokens), or
    # with <domain>.<account hash> after ACK and possibly a token at the end (11 or 12).
    reply: str = msg.reply or ""
    tokens = reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4])
    return int(msg.metadata.num_delivered)


_NO_HEADERS: Mapping[str, str] = {}


def _headers(msg: Any) -> Mapping[str, str]:
    # nats-py parses headers into a str -> str dict already; read it, never copy it per message.
    headers: Mapping[str, str] | None = msg.headers
    return headers if headers is not None else _NO_HEADERS
