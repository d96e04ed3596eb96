"""Tenants and quotas of the key and tenant store reach the scheduler and metering without a
restart; the audit log records job cancellations (also refused ones) and node deregistrations
made anywhere in the mesh."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import nats
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.registry.tables import TenantRow
from tests.conftest import service_channel, wait_for
from tests.integration.test_metering import Publisher, _usage
from tests.integration.test_placement import EVALUATION, QUEUED, RUNNING, Mesh, _spec

pytestmark = pytest.mark.integration

ADMIN_KEY = "live-admin"
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _gateway(
    common, closer, mesh: Mesh, scheduler_addr: str = "", metering_addr: str = ""
) -> GatewayServer:
    assert mesh.registry is not None
    config = GatewayConfig(
        api_keys=f"{ADMIN_KEY}=ops:admin",
        registry_addr=mesh.registry.address,
        scheduler_addr=scheduler_addr,
        metering_addr=metering_addr,
    )
    gw = GatewayServer(common, config)
    await gw.start()
    closer.append(gw)
    return gw


async def test_scheduler_quotas_follow_the_store_without_a_restart(common, closer):
    mesh = Mesh(common, closer)
    await mesh.start_registry()
    await mesh.agent("npu-a", devices=2, speed=0.0)
    await mesh.start_scheduler()
    assert mesh.scheduler is not None and mesh.scheduler.directory is not None
    gw = await _gateway(common, closer, mesh, scheduler_addr=mesh.scheduler.address)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="acme", borrow_limit_devices=1), metadata=ADMIN
        )
        key = (
            await admin.CreateKey(admin_pb2.CreateKeyRequest(tenant="acme"), metadata=ADMIN)
        ).secret
        directory = mesh.scheduler.directory
        await wait_for(lambda: "acme" in directory.tenants, what="scheduler heard of acme")
        jobs = scheduler_pb2_grpc.SchedulerServiceStub(ch)

        async def state(job_id: str) -> scheduler_pb2.Job:
            got = await jobs.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id), metadata=auth(key))
            return got.job

        first, second = [
            (
                await jobs.SubmitJob(
                    scheduler_pb2.SubmitJobRequest(spec=_spec(kind=EVALUATION)), metadata=auth(key)
                )
            ).job
            for _ in range(2)
        ]
        await wait_for(lambda: _is(state, first.job_id, RUNNING), what="first job running")

        async def held_by_quota() -> bool:
            job = await state(second.job_id)
            return job.state == QUEUED and job.pending_reason == "QuotaExceeded"

        await wait_for(held_by_quota, what="second job held by acme's borrowing limit")
        assert "borrowing limit is 1" in (await state(second.job_id)).state_reason
        # Raised in the store: the scheduler places the job, no restart.
        await admin.UpdateTenant(
            admin_pb2.UpdateTenantRequest(name="acme", borrow_limit_devices=2), metadata=ADMIN
        )
        await wait_for(lambda: _is(state, second.job_id, RUNNING), what="second job running")


async def _is(state, job_id: str, wanted: int) -> bool:
    return (await state(job_id)).state == wanted


async def test_metering_learns_tenants_from_the_store_without_a_restart(
    common, closer, nats_server
):
    mesh = Mesh(common, closer)
    reg = await mesh.start_registry()
    meter = MeteringServer(common, MeteringConfig(registry_addr=reg.address))
    await meter.start()
    closer.append(meter)
    gw = await _gateway(common, closer, mesh, metering_addr=meter.address)
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    try:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="newco"), metadata=ADMIN)
            await wait_for(lambda: "newco" in meter.tenants, what="metering heard of newco")
            # A tenant that reached the store but not (yet) this metering: written straight to
            # the registry's table, no event. Its usage makes metering ask the store first.
            assert reg.keys is not None
            now = datetime.now(UTC)
            async with reg.keys._db.session() as session, session.begin():
                session.add(
                    TenantRow(
                        name="quiet",
                        guaranteed_milli=0,
                        borrow_limit_milli=None,
                        rate_limit_per_s=0.0,
                        burst=0,
                        created_at=now,
                        updated_at=now,
                        revision=1,
                    )
                )
            await pub.publish(_usage("u-newco", tenant="newco", tokens_in=5))
            await pub.publish(_usage("u-quiet", tenant="quiet", tokens_in=6))
            await pub.publish(_usage("u-ghost", tenant="ghost", tokens_in=7))
            await wait_for(pub.consumed, within=15, what="metering consumed the usage")
            usage = metering_pb2_grpc.MeteringServiceStub(ch)
            listed = await usage.ListUsage(
                metering_pb2.ListUsageRequest(tenant="*"), metadata=ADMIN
            )
            assert sorted(r.usage_id for r in listed.records) == ["u-newco", "u-quiet"]
            assert "ghost" not in meter.tenants
    finally:
        await nc.close()


async def test_audit_log_records_cancels_and_deregistrations(common, closer):
    mesh = Mesh(common, closer)
    reg = await mesh.start_registry()
    await mesh.agent("npu-a", devices=1, speed=0.0)
    await mesh.start_scheduler()
    assert mesh.scheduler is not None
    gw = await _gateway(common, closer, mesh, scheduler_addr=mesh.scheduler.address)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        keys, secrets = {}, {}
        for tenant in ("acme", "globex"):
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=tenant), metadata=ADMIN)
            made = await admin.CreateKey(admin_pb2.CreateKeyRequest(tenant=tenant), metadata=ADMIN)
            keys[tenant], secrets[tenant] = made.key, made.secret
        jobs = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        job = (
            await jobs.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=_spec(kind=EVALUATION)),
                metadata=auth(secrets["acme"]),
            )
        ).job
        # globex tries to cancel acme's job: NOT_FOUND to globex, and kept in the log.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await jobs.CancelJob(
                scheduler_pb2.CancelJobRequest(job_id=job.job_id), metadata=auth(secrets["globex"])
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await jobs.CancelJob(
            scheduler_pb2.CancelJobRequest(job_id=job.job_id, reason="not needed"),
            metadata=auth(secrets["acme"]),
        )

        async def cancels() -> list[admin_pb2.AuditEvent]:
            got = await admin.ListAuditEvents(
                admin_pb2.ListAuditEventsRequest(action="job.cancel", resource_id=job.job_id),
                metadata=ADMIN,
            )
            return list(got.events)

        await wait_for(lambda: _count(cancels, 2), what="both cancel attempts in the audit log")
        done, refused = await cancels()
        assert (done.actor_tenant, done.actor_key_id, done.result) == (
            "acme",
            keys["acme"].key_id,
            "OK",
        )
        assert (done.service, done.resource_tenant, done.detail) == (
            "scheduler",
            "acme",
            "not needed",
        )
        assert (refused.actor_tenant, refused.actor_key_id, refused.result) == (
            "globex",
            keys["globex"].key_id,
            "NOT_FOUND",
        )
        # Only admin keys read the log.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ListAuditEvents(
                admin_pb2.ListAuditEventsRequest(), metadata=auth(secrets["acme"])
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A node deregistered (as an agent does at stop): recorded by the registry itself.
    async with service_channel(reg.address, identity="agent") as ch:
        await registry_pb2_grpc.NodeLeaseServiceStub(ch).DeregisterNode(
            registry_pb2.DeregisterNodeRequest(node_id="npu-a", reason="maintenance")
        )
    async with grpc.aio.insecure_channel(gw.address) as ch:
        log = await admin_pb2_grpc.AdminServiceStub(ch).ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action="node.deregister"), metadata=ADMIN
        )
    assert [(e.resource_id, e.detail, e.service) for e in log.events] == [
        ("npu-a", "maintenance", "registry")
    ]


async def _count(fetch, n: int) -> bool:
    return len(await fetch()) >= n
