"""The services' storage on a real PostgreSQL server (SQLite is the default elsewhere)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pocgrid.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel
from tests.postgres import postgres_server

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_server()


async def test_registry_and_scheduler_on_postgres(common, closer, pg_url):
    reg = RegistryServer(common, RegistryConfig(registry_database_url=pg_url))
    await reg.start()
    request = registry_pb2.RegisterNodeRequest(
        node_id="pg-node",
        chip="bi-v100",
        agent_address="127.0.0.1:1",
        devices=[registry_pb2.Device(device_id="cuda:0", index=0, memory_total_bytes=1 << 34)],
    )
    async with service_channel(reg.address, identity="agent") as ch:
        await registry_pb2_grpc.NodeLeaseServiceStub(ch).RegisterNode(request)
        await registry_pb2_grpc.NodeLeaseServiceStub(ch).Heartbeat(
            registry_pb2.HeartbeatRequest(node_id="pg-node", sequence=1)
        )
    await reg.stop()  # flushes heartbeat times to PostgreSQL
    reg2 = RegistryServer(common, RegistryConfig(registry_database_url=pg_url))
    await reg2.start()
    closer.append(reg2)
    async with service_channel(reg2.address, identity="agent") as ch:
        node = (
            await registry_pb2_grpc.RegistryServiceStub(ch).GetNode(
                registry_pb2.GetNodeRequest(node_id="pg-node")
            )
        ).node
    assert node.devices[0].device_id == "cuda:0"

    sched = SchedulerServer(common, SchedulerConfig(scheduler_database_url=pg_url))
    await sched.start()
    closer.append(sched)
    md = (("x-pocgrid-tenant", "acme"),)
    async with service_channel(sched.address) as ch:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        spec = scheduler_pb2.JobSpec(
            model="Qwen2.5-7B", devices=1, precision=common_pb2.PRECISION_BF16
        )
        first = await stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=spec, idempotency_key="k1"), metadata=md
        )
        again = await stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=spec, idempotency_key="k1"), metadata=md
        )
        assert first.job.job_id == again.job.job_id
        listed = await stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=md)
        assert [j.job_id for j in listed.jobs] == [first.job.job_id]
