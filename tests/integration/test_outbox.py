"""The core outbox: order per aggregate through a failure, and every publisher (scheduler job
events, registry node events) through a real nats-server outage: stopped, and
started again on the same port and JetStream store."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import nats
import pytest
from nats.js.api import DeliverPolicy
from sqlalchemy import MetaData

from pocgrid.v1 import (
    common_pb2,
    events_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.core.outbox import Outbox, OutboxEvent, OutboxRelay, outbox_table
from services.core.storage import Database
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

ACME = (("x-pocgrid-tenant", "acme"),)
#: An RPC that waited on the bus took 5 s (nats-py's request timeout); at once is well under 1 s.
PROMPT_S = 1.0


def _event(aggregate: str, n: int) -> OutboxEvent:
    message = events_pb2.JobStateChanged(event_id=f"{aggregate}/{n}", job_id=aggregate)
    return OutboxEvent("scheduler.job.test", message, message.event_id, aggregate=aggregate)


async def test_a_failure_holds_back_its_aggregate_only_and_order_holds(tmp_path):
    metadata = MetaData()
    table = outbox_table(metadata, "test_outbox")
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    outbox = Outbox(db, table)
    sent: list[str] = []
    fail_once = {"a/2"}

    async def publish(subject, event, event_id):
        assert isinstance(event, events_pb2.JobStateChanged)  # decoded as the type written
        if event_id in fail_once:
            fail_once.discard(event_id)
            raise ConnectionError("nats down")
        sent.append(event_id)

    try:
        await outbox.emit(_event("a", 1), _event("b", 1), _event("a", 2))
        await outbox.emit(_event("a", 3), _event("b", 2))
        relay = OutboxRelay(outbox, publish)
        # a/2 fails: a/3 waits behind it, b carries on.
        assert await relay.publish_pending() == 3
        assert relay.last_pass_failed
        assert sent == ["a/1", "b/1", "b/2"]
        assert await outbox.count_pending() == 2
        assert await relay.publish_pending() == 2
        assert sent == ["a/1", "b/1", "b/2", "a/2", "a/3"]
        assert await relay.publish_pending() == 0 and not relay.last_pass_failed
        # Published rows are purged after their retention; pending ones never are.
        await outbox.emit(_event("c", 1))
        assert await outbox.purge_published(datetime.now(UTC) + timedelta(seconds=1)) == 5
        assert await outbox.count_pending() == 1
    finally:
        await db.dispose()


def _spec() -> scheduler_pb2.JobSpec:
    return scheduler_pb2.JobSpec(
        model="Qwen2.5-7B", chip="ascend-910b2", devices=1, precision=common_pb2.PRECISION_FP16
    )


async def _timed(call):
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def test_submit_answers_at_once_with_nats_down(common, closer, nats_server):
    sched = SchedulerServer(common, SchedulerConfig())
    await sched.start()
    closer.append(sched)
    nats_server.stop()
    try:
        async with service_channel(sched.address) as ch:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            request = scheduler_pb2.SubmitJobRequest(spec=_spec(), idempotency_key="once")
            first, took = await _timed(stub.SubmitJob(request, metadata=ACME))
            assert took < PROMPT_S, f"SubmitJob took {took:.2f} s with NATS down"
            # A client retry finds the committed job instead of making a second one.
            again, took = await _timed(stub.SubmitJob(request, metadata=ACME))
            assert took < PROMPT_S and again.job.job_id == first.job.job_id
            _, took = await _timed(
                stub.CancelJob(
                    scheduler_pb2.CancelJobRequest(job_id=first.job.job_id), metadata=ACME
                )
            )
            assert took < PROMPT_S, f"CancelJob took {took:.2f} s with NATS down"
    finally:
        nats_server.start()


async def test_job_events_of_an_outage_arrive_once_each_in_order(common, closer, nats_server):
    sched = SchedulerServer(common, SchedulerConfig())
    await sched.start()
    closer.append(sched)
    assert sched.relay is not None
    nats_server.stop()
    expected: dict[str, list[str]] = {}
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        # Three jobs, each submitted and cancelled, their events interleaved in the outbox.
        jobs = [
            (await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=_spec()), metadata=ACME)).job
            for _ in range(3)
        ]
        for job in jobs:
            await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id), metadata=ACME)
            expected[job.job_id] = [f"job/{job.job_id}/1/queued", f"job/{job.job_id}/1/cancelled"]
    outbox = sched.relay._outbox
    # 6 job events and each cancellation's audit record (audit.scheduler.job.cancel).
    assert await outbox.count_pending() == 9
    # Let the relay try (and fail) while NATS is away.
    await asyncio.sleep(0.5)
    assert await outbox.count_pending() == 9

    nats_server.start()  # same port, same JetStream store
    await wait_for(
        lambda: _zero(outbox.count_pending()), within=20, what="the relay to publish the backlog"
    )
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        received: list[events_pb2.JobStateChanged] = []

        async def on_msg(msg):
            received.append(events_pb2.JobStateChanged.FromString(msg.data))

        await js.subscribe("scheduler.job.>", cb=on_msg, deliver_policy=DeliverPolicy.ALL)
        await wait_for(lambda: len(received) >= 6, within=10, what="six job events")
        info = await js.stream_info("POCGRID_SCHEDULER")
        assert info.state.messages == 6  # stored once each: no duplicate got in
        await asyncio.sleep(0.3)  # nothing more comes
        ids = [e.event_id for e in received]
        assert len(ids) == 6 and sorted(ids) == sorted(i for v in expected.values() for i in v)
        for job_id, order in expected.items():
            assert [e.event_id for e in received if e.job_id == job_id] == order
        assert {e.state for e in received} == {"JOB_STATE_QUEUED", "JOB_STATE_CANCELLED"}
    finally:
        await nc.close()


async def test_node_events_of_an_outage_are_published_when_nats_is_back(
    common, closer, nats_server
):
    # Until the outbox, a node event whose publish failed was logged and lost.
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    nats_server.stop()
    try:
        async with service_channel(reg.address, identity="agent") as ch:
            lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
            request = registry_pb2.RegisterNodeRequest(
                node_id="offline-node",
                chip="ascend-910b2",
                agent_address="127.0.0.1:1",
                devices=[
                    registry_pb2.Device(device_id="npu:0", index=0, memory_total_bytes=1 << 30)
                ],
            )
            _, took = await _timed(lease.RegisterNode(request))
            assert took < PROMPT_S, f"RegisterNode took {took:.2f} s with NATS down"
            await lease.DeregisterNode(
                registry_pb2.DeregisterNodeRequest(node_id="offline-node", reason="maintenance")
            )
    finally:
        nats_server.start()
    nc = await nats.connect(nats_server.url)
    try:
        subjects: list[str] = []

        async def on_msg(msg):
            subjects.append(msg.subject)

        await nc.jetstream().subscribe("registry.>", cb=on_msg, deliver_policy=DeliverPolicy.ALL)
        await wait_for(lambda: len(subjects) >= 2, within=20, what="the node's two events")
        await asyncio.sleep(0.3)
        assert subjects == ["registry.node.registered", "registry.node.deregistered"]
    finally:
        await nc.close()


async def _zero(count) -> bool:
    return await count == 0
