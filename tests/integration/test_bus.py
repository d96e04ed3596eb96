"""The JetStream bus on a real nats-server: dedup by event id, and a close that loses nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider

from devmesh.nats_server import NatsServer
from pocgrid.v1 import events_pb2
from services.core.bus import CLOSE_TIMEOUT_S, FETCH_WAIT_S, EventBus, EventMeta
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _bus(nats_server: NatsServer, name: str) -> EventBus:
    return EventBus(nats_server.url, TracerProvider().get_tracer("test"), name)


def _usage(event_id: str) -> events_pb2.UsageRecorded:
    return events_pb2.UsageRecorded(event_id=event_id, tenant="t", chip="ascend-910b2", samples=1)


async def test_duplicate_event_id_is_stored_once(nats_server: NatsServer):
    bus = _bus(nats_server, "dedup")
    await bus.connect()
    seen: list[str] = []

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        seen.append(meta.event_id)

    try:
        for _ in range(3):
            await bus.publish("usage.recorded", _usage("u-1"), "u-1")
        await bus.publish("usage.recorded", _usage("u-2"), "u-2")
        bus.consume("POCGRID_USAGE", "dedup-test", "usage.>", events_pb2.UsageRecorded, handler)
        await wait_for(lambda: len(seen) >= 2, what="both distinct events")
    finally:
        await bus.close()
    assert seen == ["u-1", "u-2"]


async def test_close_after_idle_pulls_is_prompt(nats_server: NatsServer):
    # An expired pull leaves the server's status reply in the subscription's queue; a
    # connection drain used to wait its whole drain_timeout (30 s) for that queue to empty.
    bus = _bus(nats_server, "idle")
    await bus.connect()

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        return None

    bus.consume("POCGRID_USAGE", "idle-test", "usage.>", events_pb2.UsageRecorded, handler)
    await asyncio.sleep(FETCH_WAIT_S * 2.5)  # let two pulls expire: the condition under test
    started = time.monotonic()
    await bus.close()
    assert time.monotonic() - started < FETCH_WAIT_S + 1.0 < CLOSE_TIMEOUT_S


async def test_close_lets_a_running_handler_finish_and_ack(nats_server: NatsServer):
    bus = _bus(nats_server, "busy")
    await bus.connect()
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        entered.set()
        await release.wait()
        finished.append(meta.event_id)

    await bus.publish("usage.recorded", _usage("u-slow"), "u-slow")
    bus.consume("POCGRID_USAGE", "busy-test", "usage.>", events_pb2.UsageRecorded, slow)
    await asyncio.wait_for(entered.wait(), 10)
    closing = asyncio.create_task(bus.close())
    await asyncio.sleep(0.05)
    assert not closing.done(), "close() must wait for the handler in hand"
    release.set()
    await asyncio.wait_for(closing, CLOSE_TIMEOUT_S + FETCH_WAIT_S + 1)
    assert finished == ["u-slow"]

    # It was acked: the same durable consumer, reconnected, gets nothing again.
    again: list[str] = []

    async def record(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        again.append(meta.event_id)

    bus2 = _bus(nats_server, "busy-2")
    await bus2.connect()
    try:
        await bus2.publish("usage.recorded", _usage("u-next"), "u-next")
        bus2.consume("POCGRID_USAGE", "busy-test", "usage.>", events_pb2.UsageRecorded, record)
        await wait_for(lambda: bool(again), what="the next event")
    finally:
        await bus2.close()
    assert again == ["u-next"]
