"""The JetStream bus on a real nats-server: dedup by event id, and a close that loses nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pytest
from opentelemetry.sdk.trace import TracerProvider

from devmesh.nats_server import NatsServer
from pocgrid.v1 import events_pb2
from services.core.bus import CLOSE_TIMEOUT_S, EventBus, EventMeta
from services.core.config import CommonConfig
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

FETCH_WAIT_S = CommonConfig().consumer_fetch_wait_s


def _bus(nats_server: NatsServer, name: str, **config: Any) -> EventBus:
    return EventBus(
        nats_server.url, TracerProvider().get_tracer("test"), name, CommonConfig(**config)
    )


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


@pytest.mark.parametrize("fetch_wait_s", [0.005, 0.2])
async def test_consumer_left_idle_for_many_fetch_timeouts_still_consumes(
    nats_server: NatsServer, fetch_wait_s: float
):
    # The defect: a pull that expired empty can raise a plain asyncio.TimeoutError (not nats-py's
    # subclass), which ended the consume loop silently. Very short pulls hit that edge often.
    bus = _bus(nats_server, "idle-consume", consumer_fetch_wait_s=fetch_wait_s)
    await bus.connect()
    seen: list[str] = []

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        seen.append(meta.event_id)

    try:
        task = bus.consume("POCGRID_USAGE", "idle", "usage.>", events_pb2.UsageRecorded, handler)
        idle_s = max(1.5, 8 * fetch_wait_s)
        await asyncio.sleep(idle_s)  # idle on purpose: the condition under test is time passing
        assert not task.done(), f"consume loop ended: {task.exception() if task.done() else ''}"
        assert [s.failures for s in bus.consumer_states()] == [0]
        await bus.publish("usage.recorded", _usage("after-idle"), "after-idle")
        await wait_for(lambda: seen == ["after-idle"], what="the event published after idling")
        assert bus.health() == {"pocgrid.bus": True, "pocgrid.bus.consumer.idle": True}
    finally:
        await bus.close()


async def test_consumer_resubscribes_when_its_durable_is_deleted(nats_server: NatsServer):
    bus = _bus(
        nats_server,
        "resub",
        consumer_fetch_wait_s=0.1,
        consumer_backoff_initial_s=0.05,
        consumer_check_interval_s=0.3,
    )
    await bus.connect()
    seen: list[str] = []

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        seen.append(meta.event_id)

    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        bus.consume("POCGRID_USAGE", "resub", "usage.>", events_pb2.UsageRecorded, handler)
        await bus.publish("usage.recorded", _usage("u-1"), "u-1")
        await wait_for(lambda: seen == ["u-1"], what="the first event")
        await js.delete_consumer("POCGRID_USAGE", "resub")
        await wait_for(
            lambda: any(s.failures for s in bus.consumer_states()),
            what="the consumer to notice its durable is gone",
        )
        await bus.publish("usage.recorded", _usage("u-2"), "u-2")
        # Re-created with DeliverPolicy.ALL, so u-1 comes again: handlers are idempotent.
        await wait_for(lambda: "u-2" in seen, what="the event after the durable was re-created")
    finally:
        await nc.close()
        await bus.close()
