"""What a service stored is there after a restart, on each backend (conftest's ``database_url``:
SQLite files, and databases made on first use on the session's PostgreSQL server)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pocgrid.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.adapter.config import AdapterConfig
from services.adapter.service import AdapterServer
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.evaluator.config import EvaluatorConfig
from services.evaluator.service import EvaluatorServer
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration


async def test_registry_and_scheduler_keep_their_state_across_a_restart(common, closer):
    reg = RegistryServer(common, RegistryConfig())
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
    reg2 = RegistryServer(common, RegistryConfig())
    await reg2.start()
    closer.append(reg2)
    async with service_channel(reg2.address, identity="agent") as ch:
        node = (
            await registry_pb2_grpc.RegistryServiceStub(ch).GetNode(
                registry_pb2.GetNodeRequest(node_id="pg-node")
            )
        ).node
    assert node.devices[0].device_id == "cuda:0"

    sched = SchedulerServer(common, SchedulerConfig())
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


async def test_every_service_that_stores_state_uses_the_backend_under_test(
    common, closer, database_url
):
    """The PostgreSQL half of the suite is real: each stateful service, given only
    ``POCGRID_DATABASE_URL``, keeps its tables in a database of its own on the server (an agent
    in one named after its node), and leaves no SQLite file behind."""
    registry = RegistryServer(common, RegistryConfig())
    await registry.start()
    closer.append(registry)
    services = [
        registry,
        SchedulerServer(common, SchedulerConfig(registry_addr=registry.address)),
        MeteringServer(common, MeteringConfig(api_keys="k=acme")),
        AdapterServer(common, AdapterConfig()),
        EvaluatorServer(common, EvaluatorConfig()),
        AgentServer(
            common,
            AgentConfig(
                chip="bi-v100", devices=1, node_id="pg-agent", registry_addr=registry.address
            ),
        ),
    ]
    for svc in services[1:]:
        await svc.start()
        closer.append(svc)
    for svc in services:
        [db] = svc._databases
        url = db.engine.url
        if database_url:
            assert url.get_backend_name() == "postgresql"
            expected = "agent-pg-agent" if svc.name == "agent" else svc.name
            assert url.database == database_url.rsplit("/", 1)[1].replace("{name}", expected)
            async with db.engine.connect() as conn:
                tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            assert tables, f"{svc.name}: no tables in {url.database}"
        else:
            assert url.get_backend_name() == "sqlite"
    sqlite_files = list(common.data_dir.glob("*.db")) if common.data_dir.exists() else []
    assert bool(sqlite_files) == (not database_url), sqlite_files
