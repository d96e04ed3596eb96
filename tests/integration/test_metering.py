"""Metering against a real nats-server and real gRPC: usage events consumed from JetStream,
stored once however often they arrive, queried per tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.v1 import common_pb2, events_pb2, metering_pb2, metering_pb2_grpc
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

ACME = (("x-pocgrid-tenant", "acme"),)
GLOBEX = (("x-pocgrid-tenant", "globex"),)
#: The gateway's keys, as metering reads them: its tenants.
TENANTS = "key-acme=acme,key-globex=globex"
GIB = 1 << 30
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def _ts(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _usage(event_id: str, *, minute: int = 0, **fields) -> events_pb2.UsageRecorded:
    values: dict[str, Any] = {
        "tenant": "acme",
        "chip": "ascend-910b2",
        "node_id": "node-a",
        "job_id": "job-a",
    }
    values.update(fields)
    start = T0 + timedelta(minutes=minute)
    return events_pb2.UsageRecorded(
        event_id=event_id,
        started_at=_ts(start),
        ended_at=_ts(start + timedelta(seconds=30)),
        **values,
    )


async def _metering(common) -> MeteringServer:
    server = MeteringServer(common, MeteringConfig(api_keys=TENANTS))
    await server.start()
    return server


class Publisher:
    """A plain nats-py JetStream publisher, as an agent would be."""

    def __init__(self, js) -> None:
        self.js = js
        self.last_seq = 0

    async def publish(self, event: events_pb2.UsageRecorded, msg_id: str | None = None):
        ack = await self.js.publish(
            "usage.recorded",
            event.SerializeToString(),
            headers={"Nats-Msg-Id": msg_id or event.event_id},
        )
        self.last_seq = max(self.last_seq, ack.seq)
        return ack

    async def consumed(self) -> bool:
        """The metering consumer has acknowledged everything published so far."""
        try:
            info = await self.js.consumer_info("POCGRID_USAGE", "metering")
        except nats.js.errors.NotFoundError:
            return False  # the consumer is created when metering's consume loop starts
        return info.ack_floor.stream_seq >= self.last_seq and info.num_ack_pending == 0


async def test_duplicates_and_redeliveries_are_stored_once(common, closer, nats_server):
    meter = await _metering(common)
    closer.append(meter)
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    first = _usage("usage-1", tokens_in=100, tokens_out=40, busy_device_us=1_500_000)
    ack = await pub.publish(first)
    assert not ack.duplicate
    # A retried publish inside the duplicate window: JetStream itself drops it.
    assert (await pub.publish(first)).duplicate
    # The same event again under a new message id (a re-publish after the window, or a
    # publisher that lost its ack): JetStream stores it, metering must not count it twice.
    assert not (await pub.publish(first, msg_id="usage-1-after-window")).duplicate
    await pub.publish(
        _usage("usage-2", minute=5, tokens_in=10, tokens_out=2, busy_device_us=500_000)
    )
    await pub.publish(
        _usage(
            "usage-3",
            minute=10,
            chip="mlu370-x8",
            job_id="job-b",
            samples=7,
            busy_device_us=2_000_000,
            memory_byte_seconds=12 * GIB + GIB // 2,
        )
    )
    await pub.publish(_usage("usage-4", tenant="globex", tokens_in=999))
    await wait_for(pub.consumed, within=10, what="metering to consume every usage event")

    async with service_channel(meter.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        listed = await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=ACME)
        assert [r.usage_id for r in listed.records] == ["usage-1", "usage-2", "usage-3"]
        assert listed.page.total_size == 3
        assert listed.records[0].tokens_in == 100 and listed.records[0].tenant == "acme"
        assert listed.records[0].ended_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=30)

        summary = await stub.GetUsageSummary(metering_pb2.GetUsageSummaryRequest(), metadata=ACME)
        assert summary.tenant == "acme"
        by_chip = {c.chip: c for c in summary.by_chip}
        assert sorted(by_chip) == ["ascend-910b2", "mlu370-x8"]
        ascend = by_chip["ascend-910b2"]
        assert (ascend.records, ascend.tokens_in, ascend.tokens_out) == (2, 110, 42)
        assert ascend.busy_device_us == 2_000_000
        mlu = by_chip["mlu370-x8"]
        assert (mlu.records, mlu.samples) == (1, 7)
        assert mlu.memory_byte_seconds == 12 * GIB + GIB // 2

        theirs = await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=GLOBEX)
        assert [r.usage_id for r in theirs.records] == ["usage-4"]
        their_summary = await stub.GetUsageSummary(
            metering_pb2.GetUsageSummaryRequest(), metadata=GLOBEX
        )
        assert [(c.chip, c.tokens_in) for c in their_summary.by_chip] == [("ascend-910b2", 999)]
    await nc.close()


async def test_filters_window_and_paging(common, closer, nats_server):
    meter = await _metering(common)
    closer.append(meter)
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    for i in range(6):
        chip = "ascend-910b2" if i % 2 == 0 else "mlu370-x8"
        await pub.publish(
            _usage(f"u-{i}", minute=i * 10, chip=chip, job_id=f"job-{i % 3}", tokens_out=i)
        )
    await wait_for(pub.consumed, within=10, what="metering to consume every usage event")
    async with service_channel(meter.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)

        async def ids(**fields) -> list[str]:
            resp = await stub.ListUsage(metering_pb2.ListUsageRequest(**fields), metadata=ACME)
            return [r.usage_id for r in resp.records]

        assert await ids(chip="mlu370-x8") == ["u-1", "u-3", "u-5"]
        assert await ids(job_id="job-0") == ["u-0", "u-3"]
        # Windows select on when usage ended: [since, until).
        window: dict[str, Any] = {
            "since": _ts(T0 + timedelta(minutes=10)),
            "until": _ts(T0 + timedelta(minutes=30, seconds=30)),
        }
        assert await ids(**window) == ["u-1", "u-2"]
        summary = await stub.GetUsageSummary(
            metering_pb2.GetUsageSummaryRequest(**window), metadata=ACME
        )
        assert {(c.chip, c.records, c.tokens_out) for c in summary.by_chip} == {
            ("ascend-910b2", 1, 2),
            ("mlu370-x8", 1, 1),
        }
        seen: list[str] = []
        token = ""
        while True:
            resp = await stub.ListUsage(
                metering_pb2.ListUsageRequest(
                    page=common_pb2.PageRequest(page_size=4, page_token=token)
                ),
                metadata=ACME,
            )
            seen += [r.usage_id for r in resp.records]
            token = resp.page.next_page_token
            if not token:
                break
        assert seen == [f"u-{i}" for i in range(6)]

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListUsage(
                metering_pb2.ListUsageRequest(since=_ts(T0), until=_ts(T0)), metadata=ACME
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("until")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUsageSummary(metering_pb2.GetUsageSummaryRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await nc.close()


async def test_bad_events_are_dropped_and_consumption_resumes_after_restart(
    common, closer, nats_server
):
    meter = await _metering(common)
    closer.append(meter)  # stop() is idempotent: this only matters if the test fails early
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    await pub.publish(_usage("no-tenant", tenant=""))
    await pub.publish(_usage("negative", tokens_in=-5))
    # Not protobuf at all: terminated by the bus, never redelivered.
    junk = await pub.js.publish(
        "usage.recorded", b"\xff\xff not protobuf", headers={"Nats-Msg-Id": "junk"}
    )
    pub.last_seq = junk.seq
    await pub.publish(_usage("good-1", tokens_in=1))
    await wait_for(pub.consumed, within=10, what="metering to consume every usage event")
    await meter.stop()

    # Published while metering is down: the durable consumer picks it up after the restart.
    await pub.publish(_usage("good-2", tokens_in=2))
    meter2 = await _metering(common)
    closer.append(meter2)
    await wait_for(pub.consumed, within=10, what="metering to resume its durable consumer")
    async with service_channel(meter2.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        listed = await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=ACME)
        assert [r.usage_id for r in listed.records] == ["good-1", "good-2"]
    await nc.close()
