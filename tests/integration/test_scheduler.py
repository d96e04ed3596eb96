"""Scheduler against a real nats-server and real gRPC: submit, get, list, cancel, idempotency,
tenant isolation, validation, events and restart."""

from __future__ import annotations

from typing import Any

import grpc
import nats
import pytest

from pocgrid.v1 import common_pb2, events_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.core.migrations import migrate
from services.core.outbox import OutboxRelay
from services.core.storage import Database
from services.scheduler.config import SchedulerConfig
from services.scheduler.jobs import JobBook
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.service import SchedulerServer
from services.scheduler.store import JobStore
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

ACME = (("x-pocgrid-tenant", "acme"),)
GLOBEX = (("x-pocgrid-tenant", "globex"),)
QUEUED = scheduler_pb2.JOB_STATE_QUEUED
CANCELLED = scheduler_pb2.JOB_STATE_CANCELLED


def _spec(**overrides) -> scheduler_pb2.JobSpec:
    fields: dict[str, Any] = {
        "model": "Qwen2.5-7B",
        "chip": "ascend-910b2",
        "devices": 1,
        "precision": common_pb2.PRECISION_FP16,
        "priority": 10,
    }
    fields.update(overrides)
    return scheduler_pb2.JobSpec(**fields)


async def _scheduler(common) -> SchedulerServer:
    server = SchedulerServer(common, SchedulerConfig())
    await server.start()
    return server


async def test_submit_get_list_cancel_publishes_events(common, closer, nats_server):
    sched = await _scheduler(common)
    closer.append(sched)
    nc = await nats.connect(nats_server.url)
    events: list[tuple[str, events_pb2.JobStateChanged]] = []

    async def on_msg(msg):
        events.append((msg.subject, events_pb2.JobStateChanged.FromString(msg.data)))

    await nc.subscribe("scheduler.job.>", cb=on_msg)
    await nc.flush()
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        submitted = (
            await stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=_spec(model="qwen2.5-7b")), metadata=ACME
            )
        ).job
        assert submitted.job_id.startswith("job-")
        assert submitted.tenant == "acme"
        assert submitted.state == QUEUED
        # Names are stored in the catalogue's spelling.
        assert submitted.spec.model == "Qwen2.5-7B"
        got = (
            await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=submitted.job_id), metadata=ACME)
        ).job
        assert got == submitted
        listed = await stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=ACME)
        assert [j.job_id for j in listed.jobs] == [submitted.job_id]
        cancelled = (
            await stub.CancelJob(
                scheduler_pb2.CancelJobRequest(job_id=submitted.job_id, reason="changed my mind"),
                metadata=ACME,
            )
        ).job
        assert cancelled.state == CANCELLED
        assert cancelled.state_reason == "changed my mind"
        assert cancelled.updated_at.ToDatetime() >= submitted.updated_at.ToDatetime()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelJob(
                scheduler_pb2.CancelJobRequest(job_id=submitted.job_id), metadata=ACME
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already JOB_STATE_CANCELLED" in err.value.details()

    await wait_for(lambda: len(events) >= 2, within=5, what="two JobStateChanged events")
    assert [subject for subject, _ in events] == ["scheduler.job.queued", "scheduler.job.cancelled"]
    queued, cancelled_event = events[0][1], events[1][1]
    assert queued.event_id == f"job/{submitted.job_id}/1/queued"
    assert queued.state == "JOB_STATE_QUEUED" and queued.tenant == "acme"
    assert cancelled_event.event_id == f"job/{submitted.job_id}/1/cancelled"
    assert cancelled_event.reason == "changed my mind"
    assert cancelled_event.occurred_at.seconds > 0
    await nc.close()


async def test_idempotency_key_returns_the_same_job(common, closer):
    sched = await _scheduler(common)
    closer.append(sched)
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        request = scheduler_pb2.SubmitJobRequest(spec=_spec(), idempotency_key="retry-1")
        first = (await stub.SubmitJob(request, metadata=ACME)).job
        again = (await stub.SubmitJob(request, metadata=ACME)).job
        assert again == first
        # The key is the tenant's own: another tenant's identical key makes its own job.
        other = (await stub.SubmitJob(request, metadata=GLOBEX)).job
        assert other.job_id != first.job_id and other.tenant == "globex"
        # Reusing a key for a different job is refused, not silently answered with the old one.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=_spec(devices=2), idempotency_key="retry-1"),
                metadata=ACME,
            )
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert first.job_id in err.value.details()
        # No key: every submit is a new job.
        a = (await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=_spec()), metadata=ACME)).job
        b = (await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=_spec()), metadata=ACME)).job
        assert a.job_id != b.job_id
        total = (await stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=ACME)).page
        assert total.total_size == 3


async def test_tenant_isolation_and_missing_tenant(common, closer):
    sched = await _scheduler(common)
    closer.append(sched)
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        job = (
            await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=_spec()), metadata=ACME)
        ).job
        for call in (
            stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id), metadata=GLOBEX),
            stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id), metadata=GLOBEX),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert job.job_id in err.value.details()
        theirs = await stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=GLOBEX)
        assert list(theirs.jobs) == [] and theirs.page.total_size == 0
        # Still queued: globex's cancel attempt did nothing.
        mine = (
            await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id), metadata=ACME)
        ).job
        assert mine.state == QUEUED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListJobs(scheduler_pb2.ListJobsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "gateway" in err.value.details()


async def test_list_filters_by_state_and_pages(common, closer):
    sched = await _scheduler(common)
    closer.append(sched)
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        ids = []
        for i in range(5):
            request = scheduler_pb2.SubmitJobRequest(spec=_spec(display_name=f"job {i}"))
            ids.append((await stub.SubmitJob(request, metadata=ACME)).job.job_id)
        await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=ids[1]), metadata=ACME)
        await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=ids[3]), metadata=ACME)
        queued = await stub.ListJobs(scheduler_pb2.ListJobsRequest(state=QUEUED), metadata=ACME)
        assert [j.job_id for j in queued.jobs] == [ids[0], ids[2], ids[4]]
        gone = await stub.ListJobs(scheduler_pb2.ListJobsRequest(state=CANCELLED), metadata=ACME)
        assert [j.job_id for j in gone.jobs] == [ids[1], ids[3]]
        seen: list[str] = []
        token = ""
        while True:
            page = await stub.ListJobs(
                scheduler_pb2.ListJobsRequest(
                    page=common_pb2.PageRequest(page_size=2, page_token=token)
                ),
                metadata=ACME,
            )
            assert page.page.total_size == 5
            seen += [j.job_id for j in page.jobs]
            token = page.page.next_page_token
            if not token:
                break
        assert seen == ids
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListJobs(
                scheduler_pb2.ListJobsRequest(page=common_pb2.PageRequest(page_token="x")),
                metadata=ACME,
            )
        assert err.value.details().startswith("page.page_token")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (scheduler_pb2.SubmitJobRequest(), "spec"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(model="")), "spec.model"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(model="GPT-9")), "spec.model"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(chip="ascend-9100")), "spec.chip"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(devices=0)), "spec.devices"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(devices=65)), "spec.devices"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(priority=1001)), "spec.priority"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(priority=-1)), "spec.priority"),
        (scheduler_pb2.SubmitJobRequest(spec=_spec(precision=0)), "spec.precision"),
        # The Ascend 910B2 runtime runs no fp8 (vendors/ascend.json excludes it).
        (
            scheduler_pb2.SubmitJobRequest(spec=_spec(precision=common_pb2.PRECISION_FP8)),
            "spec.precision",
        ),
        (
            scheduler_pb2.SubmitJobRequest(spec=_spec(), idempotency_key="k" * 200),
            "idempotency_key",
        ),
    ],
)
async def test_submit_rejects_bad_input_naming_the_field(common, closer, request_, field):
    sched = await _scheduler(common)
    closer.append(sched)
    async with service_channel(sched.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await scheduler_pb2_grpc.SchedulerServiceStub(ch).SubmitJob(request_, metadata=ACME)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: ")


async def test_unknown_model_message_and_no_chip(common, closer):
    sched = await _scheduler(common)
    closer.append(sched)
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=_spec(model="Qwen2.5-8B")), metadata=ACME
            )
        assert "unknown model 'Qwen2.5-8B'" in err.value.details()
        # No chip: the scheduler may choose, so any precision is accepted.
        job = (
            await stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(
                    spec=_spec(chip="", precision=common_pb2.PRECISION_FP8)
                ),
                metadata=ACME,
            )
        ).job
        assert job.spec.chip == "" and job.state == QUEUED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetJob(scheduler_pb2.GetJobRequest(), metadata=ACME)
        assert err.value.details().startswith("job_id")


async def test_jobs_survive_restart(common, closer):
    sched = await _scheduler(common)
    async with service_channel(sched.address) as ch:
        job = (
            await scheduler_pb2_grpc.SchedulerServiceStub(ch).SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=_spec(), idempotency_key="k1"),
                metadata=ACME,
            )
        ).job
    await sched.stop()
    sched2 = await _scheduler(common)
    closer.append(sched2)
    async with service_channel(sched2.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        got = (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id), metadata=ACME)).job
        assert got == job
        again = (
            await stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=_spec(), idempotency_key="k1"),
                metadata=ACME,
            )
        ).job
        assert again.job_id == job.job_id


async def test_outbox_publishes_after_a_failed_publish(tmp_path):
    # NATS is "down" for the first publish: the job must still be stored with its event, and
    # the next pass must deliver the event once NATS is back, exactly once.
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}")
    await migrate(db, MIGRATIONS)
    store = JobStore(db)
    published: list[tuple[str, str]] = []
    failures = [ConnectionError("nats down")]

    async def publish(subject, event, event_id):
        if failures:
            raise failures.pop()
        published.append((subject, event_id))

    relay = OutboxRelay(store.outbox, publish, sweep_interval_s=0.001)
    try:
        job = await JobBook(store, relay).submit("acme", _spec(), "")
        assert published == []
        assert await store.get("acme", job.job_id) == job
        assert await relay.publish_pending() == 0 and relay.last_pass_failed
        assert await relay.publish_pending() == 1
        assert published == [("scheduler.job.queued", f"job/{job.job_id}/1/queued")]
        assert await relay.publish_pending() == 0
        assert await store.outbox.count_pending() == 0
    finally:
        await db.dispose()


async def test_job_event_joins_the_submit_trace(common, closer, spans, span_processor):
    sched = SchedulerServer(common, SchedulerConfig(), span_processors=[span_processor])
    await sched.start()
    closer.append(sched)
    async with service_channel(sched.address) as ch:
        await scheduler_pb2_grpc.SchedulerServiceStub(ch).SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=_spec()), metadata=ACME
        )

    def published() -> bool:
        return any(s.name == "publish scheduler.job.queued" for s in spans.get_finished_spans())

    # The RPC does not wait for the publish: the relay sends it right after the commit.
    await wait_for(published, within=5, what="the publish span")
    finished = spans.get_finished_spans()
    server = next(s for s in finished if s.name.endswith("SchedulerService/SubmitJob"))
    publish = next(s for s in finished if s.name == "publish scheduler.job.queued")
    assert publish.context.trace_id == server.context.trace_id
