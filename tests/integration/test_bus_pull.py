"""The bus's own pull fetch (``PullBatcher``) on a real nats-server: every message once, in
order, in batches of at most the size asked; an empty stream answers [] after the wait; a
message published while a fetch waits ends it at once; the delivery count read off the ack
subject is nats-py's."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from devmesh.nats_server import NatsServer
from services.core.bus import PullBatcher, delivery_count

pytestmark = pytest.mark.integration

STREAM = "PULLTEST"


async def _setup(nats_server: NatsServer, messages: int) -> tuple[Client, PullBatcher]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["pull.>"])
    for i in range(messages):
        await js.publish("pull.x", str(i).encode(), headers={"Nats-Msg-Id": f"m{i}"})
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name="d",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
            max_deliver=-1,
        ),
    )
    puller = PullBatcher(nc, STREAM, "d")
    await puller.start()
    return nc, puller


async def test_every_message_once_in_order_in_bounded_batches(nats_server: NatsServer):
    nc, puller = await _setup(nats_server, 250)
    try:
        got: list[int] = []
        sizes: list[int] = []
        while len(got) < 250:
            msgs = await puller.fetch(64, 1.0)
            assert msgs, "the stream still holds messages"
            sizes.append(len(msgs))
            for msg in msgs:
                got.append(int(msg.data))
                assert delivery_count(msg) == msg.metadata.num_delivered == 1
                await msg.ack()
        assert got == list(range(250))
        assert max(sizes) == 64 and sum(sizes) == 250
        started = time.monotonic()
        assert await puller.fetch(64, 0.5) == []
        assert 0.4 < time.monotonic() - started < 3.0  # waited about the wait, then gave up
    finally:
        await puller.unsubscribe()
        await nc.close()


async def test_a_message_published_while_waiting_is_taken_at_once(nats_server: NatsServer):
    nc, puller = await _setup(nats_server, 0)
    js = nc.jetstream()
    try:
        fetch = asyncio.ensure_future(puller.fetch(64, 5.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await js.publish("pull.x", b"late")
        msgs = await fetch
        assert [m.data for m in msgs] == [b"late"]
        assert time.monotonic() - started < 2.0  # not held until the wait ran out
    finally:
        await puller.unsubscribe()
        await nc.close()


async def test_a_redelivery_is_counted(nats_server: NatsServer):
    nc, puller = await _setup(nats_server, 3)
    try:
        first = await puller.fetch(3, 1.0)
        assert [delivery_count(m) for m in first] == [1, 1, 1]
        await first[0].nak()
        for msg in first[1:]:
            await msg.ack()
        again = await puller.fetch(3, 1.0)
        assert [m.data for m in again] == [b"0"]
        assert delivery_count(again[0]) == again[0].metadata.num_delivered == 2
    finally:
        await puller.unsubscribe()
        await nc.close()
