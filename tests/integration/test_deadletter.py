"""Dead letters on a real nats-server: poison and hopeless events leave the consumer's way with
their reason, the consumer keeps consuming, and `pocgrid admin dlq` lists and replays them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import nats
import pytest
from opentelemetry.sdk.trace import TracerProvider

from devmesh.nats_server import NatsServer
from pocgrid import deadletter
from pocgrid.cli.main import main as cli
from pocgrid.v1 import events_pb2
from services.core.bus import EventBus, EventMeta, PoisonEvent
from services.core.config import CommonConfig
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.metering.store import UsageFilter
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def _bus(nats_server: NatsServer, **config: Any) -> EventBus:
    settings = CommonConfig(
        consumer_fetch_wait_s=0.1,
        consumer_backoff_initial_s=0.02,
        consumer_backoff_max_s=0.1,
        **config,
    )
    return EventBus(nats_server.url, TracerProvider().get_tracer("test"), "dlq-test", settings)


def _usage(event_id: str, **fields: Any) -> events_pb2.UsageRecorded:
    values: dict[str, Any] = {"tenant": "acme", "chip": "ascend-910b2", "samples": 1}
    values.update(fields)
    return events_pb2.UsageRecorded(event_id=event_id, **values)


async def _dead_letters(js: Any) -> list[deadletter.DeadLetter]:
    return await deadletter.list_dead_letters(js)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = await asyncio.to_thread(cli, list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


async def test_poison_goes_to_the_dead_letter_stream_and_consuming_goes_on(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
):
    bus = _bus(nats_server)
    await bus.connect()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    handled: list[str] = []

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        if not event.tenant:
            raise PoisonEvent("no tenant")
        handled.append(meta.event_id)

    try:
        bus.consume("POCGRID_USAGE", "billing", "usage.>", events_pb2.UsageRecorded, handler)
        # Bytes that are no UsageRecorded, then an event its handler rejects, then a good one.
        await js.publish(
            "usage.recorded",
            b"\xff\xff\xff not protobuf",
            headers={
                "Nats-Msg-Id": "garbage-1",
                "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            },
        )
        await bus.publish("usage.recorded", _usage("no-tenant", tenant=""), "no-tenant")
        await bus.publish("usage.recorded", _usage("good-1"), "good-1")
        await wait_for(lambda: handled == ["good-1"], what="the good event after the poison")

        letters = await _dead_letters(js)
        assert [d.event_id for d in letters] == ["garbage-1", "no-tenant"]
        garbage, rejected = letters
        assert garbage.reason.startswith("undecodable as UsageRecorded")
        assert rejected.reason == "rejected by the handler: no tenant"
        for d in letters:
            assert (d.subject, d.stream, d.consumer, d.deliveries) == (
                "usage.recorded",
                "POCGRID_USAGE",
                "billing",
                1,
            )
            assert d.stream_seq > 0 and d.dead_at
        assert garbage.data == b"\xff\xff\xff not protobuf"
        assert garbage.headers["traceparent"].startswith("00-111")

        # The originals were terminated, not left to be redelivered.
        info = await js.consumer_info("POCGRID_USAGE", "billing")
        assert info.num_ack_pending == 0 and info.num_redelivered == 0

        rc, out, _ = await _cli(capsys, "admin", "dlq", "list", "--json", "--nats", nats_server.url)
        assert rc == 0
        listed = json.loads(out)
        assert [(x["event_id"], x["reason"]) for x in listed] == [
            (d.event_id, d.reason) for d in letters
        ]
        assert listed[0]["headers"]["traceparent"] == garbage.headers["traceparent"]
        rc, out, _ = await _cli(capsys, "admin", "dlq", "list", "--nats", nats_server.url)
        assert rc == 0 and "rejected by the handler: no tenant" in out
    finally:
        await nc.close()
        await bus.close()


async def test_an_event_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    nats_server: NatsServer,
):
    bus = _bus(nats_server, consumer_max_deliver=3)
    await bus.connect()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    attempts: list[int] = []
    handled: list[str] = []

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        if meta.event_id == "flaky":
            attempts.append(meta.delivery)
            raise RuntimeError("database is down")
        handled.append(meta.event_id)

    try:
        bus.consume("POCGRID_USAGE", "billing", "usage.>", events_pb2.UsageRecorded, handler)
        await bus.publish("usage.recorded", _usage("flaky"), "flaky")
        await bus.publish("usage.recorded", _usage("fine"), "fine")
        await wait_for(lambda: len(attempts) == 3, what="three deliveries of the failing event")
        letters: list[deadletter.DeadLetter] = []

        async def dead() -> bool:
            letters[:] = await _dead_letters(js)
            return bool(letters)

        await wait_for(dead, what="the dead letter")
        assert attempts == [1, 2, 3]
        assert handled == ["fine"]
        (letter,) = letters
        assert letter.event_id == "flaky" and letter.deliveries == 3
        assert (
            letter.reason == "handler failed on delivery 3 of 3: RuntimeError('database is down')"
        )
        await asyncio.sleep(0.3)  # a terminated event must not come back: give it the chance
        assert attempts == [1, 2, 3]
    finally:
        await nc.close()
        await bus.close()


async def test_replay_delivers_the_event_again_under_its_own_id(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
):
    bus = _bus(nats_server)
    await bus.connect()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    broken = True
    handled: list[tuple[str, str]] = []

    async def handler(event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        if broken:
            raise PoisonEvent("handler not deployed yet")
        handled.append((meta.event_id, event.event_id))

    try:
        bus.consume("POCGRID_USAGE", "billing", "usage.>", events_pb2.UsageRecorded, handler)
        for eid in ("a", "b", "c"):
            await bus.publish("usage.recorded", _usage(eid), eid)

        async def three() -> bool:
            return len(await _dead_letters(js)) == 3

        await wait_for(three, what="three dead letters")
        first, *_ = await _dead_letters(js)
        broken = False

        # Within the original stream's duplicate window: the original id would be dropped.
        rc, out, _ = await _cli(
            capsys, "admin", "dlq", "replay", str(first.seq), "--json", "--nats", nats_server.url
        )
        assert rc == 0, out
        (replayed,) = json.loads(out)["replayed"]
        assert replayed["msg_id"] == f"a:replay:{first.seq}"
        await wait_for(lambda: handled == [("a", "a")], what="the replayed event")
        assert [d.event_id for d in await _dead_letters(js)] == ["b", "c"]

        rc, out, _ = await _cli(
            capsys, "admin", "dlq", "replay", "--all", "--nats", nats_server.url
        )
        assert rc == 0 and "replayed" in out
        await wait_for(lambda: len(handled) == 3, what="every replayed event")
        assert sorted(handled) == [("a", "a"), ("b", "b"), ("c", "c")]
        assert await _dead_letters(js) == []

        rc, _, err = await _cli(capsys, "admin", "dlq", "replay", "999", "--nats", nats_server.url)
        assert rc == 1 and "no dead letter 999" in err
    finally:
        await nc.close()
        await bus.close()


async def test_metering_dead_letters_usage_it_can_never_store(
    common: CommonConfig, nats_server: NatsServer, closer: list[object]
):
    metering = MeteringServer(
        dataclasses.replace(common, consumer_fetch_wait_s=0.1), MeteringConfig(api_keys="k=acme")
    )
    await metering.start()
    closer.append(metering)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        for event in (_usage("u-no-tenant", tenant=""), _usage("u-ok")):
            await js.publish(
                "usage.recorded",
                event.SerializeToString(),
                headers={"Nats-Msg-Id": event.event_id},
            )

        async def recorded() -> bool:
            rows, _ = await metering.store.query(UsageFilter(tenant="acme"), 0, 10)
            return [r.usage_id for r in rows] == ["u-ok"]

        await wait_for(recorded, what="the storable usage recorded")
        (letter,) = await _dead_letters(js)
        assert (letter.event_id, letter.consumer) == ("u-no-tenant", "metering")
        assert letter.reason == (
            "rejected by the handler: usage event 'u-no-tenant' cannot be stored: tenant: missing"
        )
    finally:
        await nc.close()
