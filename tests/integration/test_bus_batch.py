"""The bus's batch consumer: commit then ack; refused events dead-lettered with their reason;
a batch whose handler fails is handled event by event, so only the event that breaks it is
retried and, past max deliveries, dead-lettered."""

from __future__ import annotations

from collections.abc import Sequence

import nats
import pytest

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
