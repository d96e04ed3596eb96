"""The bus's batch consumer: commit then ack; refused events dead-lettered with their reason;
a batch whose handler fails is handled event by event, so only the event that breaks it is
retried and, past max deliveries, dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from devmesh.nats_server import NatsServer
from pocgrid import deadletter
from pocgrid.v1 import events_pb2
from services.core.bus import EventMeta
from tests.conftest import wait_for
from tests.integration.test_deadletter import _bus, _usage

pytestmark = pytest.mark.integration


async def test_a_batch_that_fails_whole_is_retried_event_by_event(nats_server: NatsServer):
    bus = _bus(nats_server, consumer_max_deliver=3)
    await bus.connect()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stored: list[str] = []
    calls: list[int] = []

    async def handler(batch: Sequence[tuple[events_pb2.UsageRecorded, EventMeta]]) -> list[str]:
        calls.append(len(batch))
        ids = [meta.event_id for _, meta in batch]
        if "breaks" in ids:
            raise RuntimeError("the transaction failed")  # nothing of this batch stored
        stored.extend(ids)
        return ["refused: no samples" if e.samples == 0 else "" for e, _ in batch]

    try:
        await bus.ensure_streams()
        for event in (_usage("a"), _usage("breaks"), _usage("b"), _usage("zero", samples=0)):
            await bus.publish("usage.recorded", event, event.event_id)
        bus.consume_batch("POCGRID_USAGE", "batcher", "usage.>", events_pb2.UsageRecorded, handler)

        async def done() -> bool:
            letters = await deadletter.list_dead_letters(js)
            return len(letters) == 2

        await wait_for(done, within=20, what="the breaking and the refused event dead-lettered")
        letters = {d.event_id: d.reason for d in await deadletter.list_dead_letters(js)}
        assert "refused: no samples" in letters["zero"]
        assert "handler failed on delivery 3 of 3" in letters["breaks"]
        # The first fetch took all four; a and b were stored when it was handled one by one.
        assert calls[0] == 4
        assert "a" in stored and "b" in stored and "breaks" not in stored
    finally:
        await nc.close()
        await bus.close()


B = 10


async def _ack_state(js: Any, durable: str) -> tuple[int, int]:
    """(messages delivered and not acked, stream sequence acked up to) of the durable;
    (-1, -1) before the consumer made it."""
    try:
        info = await js.consumer_info("POCGRID_USAGE", durable)
    except NotFoundError:
        return -1, -1
    return int(info.num_ack_pending or 0), int(info.ack_floor.stream_seq or 0)


async def test_the_next_batch_is_fetched_while_one_commits_and_acked_only_after_it(
    nats_server: NatsServer,
):
    """Pipelining: while the handler still holds batch 1 (not committed), batch 2 is already
    delivered to the consumer; nothing is acked until batch 1's handler returns, and batch 2's
    events only after its own handler returned."""
    bus = _bus(nats_server, consumer_ack_wait_s=30)
    await bus.connect()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    seen: list[tuple[int, tuple[int, int]]] = []
    overlapped = asyncio.Event()

    async def handler(batch: Sequence[tuple[events_pb2.UsageRecorded, EventMeta]]) -> list[str]:
        if not seen:

            async def next_batch_delivered() -> bool:
                return (await _ack_state(js, "piper"))[0] == 2 * B

            # Batch 1 in hand, uncommitted: batch 2 comes meanwhile, nothing acked yet.
            await wait_for(next_batch_delivered, within=10, what="batch 2 fetched during batch 1")
            overlapped.set()
        seen.append((len(batch), await _ack_state(js, "piper")))
        return [""] * len(batch)

    try:
        await bus.ensure_streams()
        for i in range(2 * B):
            await bus.publish("usage.recorded", _usage(f"p{i}"), f"p{i}")
        bus.consume_batch(
            "POCGRID_USAGE", "piper", "usage.>", events_pb2.UsageRecorded, handler, batch=B
        )

        async def all_acked() -> bool:
            return await _ack_state(js, "piper") == (0, 2 * B)

        await wait_for(all_acked, within=20, what="both batches acked")
        assert overlapped.is_set()
        # Batch 1 saw nothing acked; batch 2 was still unacked when its handler ran (at most
        # batch 1's events were acked by then).
        assert seen[0] == (B, (2 * B, 0))
        assert len(seen) == 2 and seen[1][0] == B and seen[1][1][1] <= B
    finally:
        await nc.close()
        await bus.close()


async def test_a_batch_fetched_ahead_is_given_back_at_close(nats_server: NatsServer):
    """A consumer that stops with the next batch fetched but not handled naks it: another
    consumer of the durable gets it at once, not after the 30 s ack wait, and every event is
    handled exactly once in all."""
    first = _bus(nats_server, consumer_ack_wait_s=30)
    await first.connect()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    handled: list[str] = []
    closing: list[asyncio.Task[None]] = []

    async def handler(batch: Sequence[tuple[events_pb2.UsageRecorded, EventMeta]]) -> list[str]:
        if not handled:

            async def next_batch_delivered() -> bool:
                return (await _ack_state(js, "giver"))[0] == 2 * B

            await wait_for(next_batch_delivered, within=10, what="batch 2 fetched during batch 1")
            closing.append(asyncio.create_task(first.close()))
            await asyncio.sleep(0)  # close() begins: the bus is closing from here on
        handled.extend(meta.event_id for _, meta in batch)
        return [""] * len(batch)

    second = _bus(nats_server, consumer_ack_wait_s=30)
    try:
        await first.ensure_streams()
        for i in range(2 * B):
            await first.publish("usage.recorded", _usage(f"g{i}"), f"g{i}")
        first.consume_batch(
            "POCGRID_USAGE", "giver", "usage.>", events_pb2.UsageRecorded, handler, batch=B
        )
        await wait_for(lambda: len(handled) >= B and bool(closing), within=10, what="batch 1")
        await closing[0]
        assert sorted(handled) == sorted(f"g{i}" for i in range(B))
        await second.connect()
        second.consume_batch(
            "POCGRID_USAGE", "giver", "usage.>", events_pb2.UsageRecorded, handler, batch=B
        )
        # Within 10 s: the ack wait is 30 s, so only the nak can have brought it back.
        await wait_for(lambda: len(handled) == 2 * B, within=10, what="batch 2 handed over")
        assert sorted(handled) == sorted(f"g{i}" for i in range(2 * B))
    finally:
        await nc.close()
        await first.close()
        await second.close()
