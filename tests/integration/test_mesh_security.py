"""Issue 13's attacks on the service ports, each of which used to succeed with no key, tried
again against every service of a real mesh: a local process with a bare ``x-pocgrid-tenant``
header (or a forged token) gets UNAUTHENTICATED, a service identity doing what is not its job
gets PERMISSION_DENIED, and the state the attack aimed at is checked unchanged afterwards.

A positive control sits next to each refusal (the same call, made by the identity that may make
it, works), so a test cannot pass because the call was broken for everyone.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    metering_pb2,
    metering_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.core.mesh_channel import signed_aio_channel
from services.core.service_tokens import TOKEN_METADATA_KEY, TokenSigner
from tests.conftest import mesh_credentials, service_channel, wait_for
from tests.integration.public_mesh import PublicMesh, start_public_mesh

pytestmark = pytest.mark.integration

KEYS = "key-alpha=alpha,key-beta=beta,key-ops=ops:admin"
ALPHA = (("authorization", "Bearer key-alpha"),)
BETA = (("authorization", "Bearer key-beta"),)
OPS = (("authorization", "Bearer key-ops"),)
#: What the attacker sent in issue 13: the tenant (and admin role) as bare headers.
BARE = (("x-pocgrid-tenant", "alpha"), ("x-pocgrid-role", "admin"))
GIB = 1 << 30


@pytest.fixture
async def mesh(common, closer) -> PublicMesh:
    return await start_public_mesh(common, closer, KEYS)


def _code(exc: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return exc.value.code()


async def _refused(call: Any, code: grpc.StatusCode, words: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert _code(err) == code, err.value.details()
    assert words in (err.value.details() or ""), err.value.details()


def _forged_channel(address: str) -> grpc.aio.Channel:
    """Signs as the gateway, with a key that is not the mesh's."""
    return signed_aio_channel(address, TokenSigner("gateway", Ed25519PrivateKey.generate()))


async def test_no_service_port_of_the_mesh_is_usable_without_credentials(mesh):
    """Every RPC of every service, enumerated from what each server hosts: refused without a
    token, with a forged one and with a stolen one sent to another service; health answers."""
    pool = descriptor_pool.Default()
    tried = 0
    for name, svc in mesh.services().items():
        assert svc.service_names, name
        bare = grpc.aio.insecure_channel(svc.address)
        forged = _forged_channel(svc.address)
        # A real gateway token, made for the registry, replayed at this service.
        stolen = mesh_credentials("gateway").signer.token("alpha", True, "pocgrid.v1.Elsewhere")
        try:
            for full_name in svc.service_names:
                for method in pool.FindServiceByName(full_name).methods:
                    path = f"/{full_name}/{method.name}"
                    for channel, metadata, why in (
                        (bare, BARE, "no service token"),
                        (forged, (), "bad signature"),
                        (bare, ((TOKEN_METADATA_KEY, stolen),), "is for pocgrid.v1.Elsewhere"),
                    ):
                        if method.server_streaming:
                            call = channel.unary_stream(path)(b"", metadata=metadata, timeout=5)
                            with pytest.raises(grpc.aio.AioRpcError) as err:
                                async for _ in call:
                                    pass
                        else:
                            with pytest.raises(grpc.aio.AioRpcError) as err:
                                await channel.unary_unary(path)(b"", metadata=metadata, timeout=5)
                        assert _code(err) == grpc.StatusCode.UNAUTHENTICATED, (path, why)
                        assert why in (err.value.details() or ""), (path, err.value.details())
                        tried += 1
            health = await health_pb2_grpc.HealthStub(bare).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING, name
        finally:
            await bare.close()
            await forged.close()
    # Six servers, every RPC of the contract but the gateway's own, three ways each.
    assert tried > 3 * 40


async def test_a_bare_tenant_header_neither_reads_nor_cancels_a_job(mesh):
    async with grpc.aio.insecure_channel(mesh.gateway.address) as gw:
        public = scheduler_pb2_grpc.SchedulerServiceStub(gw)
        job = (
            await public.SubmitJob(
                scheduler_pb2.SubmitJobRequest(
                    spec=scheduler_pb2.JobSpec(
                        model="Qwen2.5-7B",
                        devices=1,
                        precision=common_pb2.PRECISION_BF16,
                        kind=scheduler_pb2.JOB_KIND_EVALUATION,
                    )
                ),
                metadata=ALPHA,
            )
        ).job
        get = scheduler_pb2.GetJobRequest(job_id=job.job_id)
        cancel = scheduler_pb2.CancelJobRequest(job_id=job.job_id, reason="attack")
        async with grpc.aio.insecure_channel(mesh.scheduler.address) as ch:
            port = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            await _refused(port.GetJob(get, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
            await _refused(port.CancelJob(cancel, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
        # An agent's key names no tenant: a compromised agent cannot act as alpha either.
        async with service_channel(mesh.scheduler.address, identity="agent") as ch:
            port = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            await _refused(
                port.CancelJob(cancel, metadata=BARE[:1]),
                grpc.StatusCode.PERMISSION_DENIED,
                "may not act for a tenant",
            )
        # Another tenant, through the gateway with its own key, whatever header it adds.
        await _refused(public.CancelJob(cancel, metadata=(*BETA, *BARE)), grpc.StatusCode.NOT_FOUND)
        after = (await public.GetJob(get, metadata=ALPHA)).job
        assert after.state != scheduler_pb2.JOB_STATE_CANCELLED and after.tenant == "alpha"
        # The control: alpha itself can cancel it.
        done = await public.CancelJob(cancel, metadata=ALPHA)
        assert done.job.state == scheduler_pb2.JOB_STATE_CANCELLED


def _rogue(node_id: str, address: str) -> registry_pb2.RegisterNodeRequest:
    return registry_pb2.RegisterNodeRequest(
        node_id=node_id,
        chip="mtt-s4000",
        agent_address=address,
        devices=[registry_pb2.Device(device_id="musa:0", index=0, memory_total_bytes=48 * GIB)],
        runtime_name="MUSA",
    )


async def _node_ids(mesh: PublicMesh) -> set[str]:
    async with grpc.aio.insecure_channel(mesh.gateway.address) as gw:
        resp = await registry_pb2_grpc.RegistryServiceStub(gw).ListNodes(
            registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY), metadata=BETA
        )
    return {n.node_id for n in resp.nodes}


async def test_no_rogue_node_registers_and_no_real_one_is_deregistered(mesh):
    rogue = _rogue("rogue-node", "127.0.0.1:1")
    bye = registry_pb2.DeregisterNodeRequest(node_id="walk-node", reason="attack")
    async with grpc.aio.insecure_channel(mesh.registry.address) as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        await _refused(lease.RegisterNode(rogue, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
        await _refused(lease.DeregisterNode(bye, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
    for identity in ("gateway", "scheduler", "evaluator"):
        async with service_channel(mesh.registry.address, identity=identity) as ch:
            lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
            await _refused(
                lease.RegisterNode(rogue), grpc.StatusCode.PERMISSION_DENIED, "only by agent"
            )
            await _refused(
                lease.DeregisterNode(bye), grpc.StatusCode.PERMISSION_DENIED, "only by agent"
            )
    assert await _node_ids(mesh) == {"walk-node"}
    # The control: a real agent's key registers a node, and every tenant then sees it.
    async with service_channel(mesh.registry.address, identity="agent") as ch:
        await registry_pb2_grpc.NodeLeaseServiceStub(ch).RegisterNode(
            _rogue("second-node", "127.0.0.1:2")
        )
    assert await _node_ids(mesh) == {"walk-node", "second-node"}


async def test_a_stolen_agent_key_cannot_act_for_another_agents_node(mesh):
    """Agents with identities of their own (the local mesh's ``agent-<chip>``): the identity
    that registered a node holds it, and another agent's key can neither renew its lease, nor
    take it over by registering it again, nor deregister it."""
    node = _rogue("a-node", "127.0.0.1:3")
    beat = registry_pb2.HeartbeatRequest(node_id="a-node", sequence=1)
    bye = registry_pb2.DeregisterNodeRequest(node_id="a-node", reason="stolen key")
    async with service_channel(mesh.registry.address, identity="agent-a") as ch:
        await registry_pb2_grpc.NodeLeaseServiceStub(ch).RegisterNode(node)
    async with service_channel(mesh.registry.address, identity="agent-b") as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        held = "held by another agent identity"
        await _refused(lease.Heartbeat(beat), grpc.StatusCode.PERMISSION_DENIED, held)
        await _refused(lease.RegisterNode(node), grpc.StatusCode.PERMISSION_DENIED, held)
        await _refused(lease.DeregisterNode(bye), grpc.StatusCode.PERMISSION_DENIED, held)
        # Its own node, it may register and renew.
        await lease.RegisterNode(_rogue("b-node", "127.0.0.1:4"))
        await lease.Heartbeat(registry_pb2.HeartbeatRequest(node_id="b-node", sequence=1))
    # The shared identity of compose and Kubernetes agents is another identity too.
    async with service_channel(mesh.registry.address, identity="agent") as ch:
        await _refused(
            registry_pb2_grpc.NodeLeaseServiceStub(ch).Heartbeat(beat),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    # The holder renews and deregisters its node; the node stayed READY meanwhile.
    assert {"a-node", "b-node"} <= await _node_ids(mesh)
    async with service_channel(mesh.registry.address, identity="agent-a") as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        await lease.Heartbeat(beat)
        await lease.DeregisterNode(bye)
    assert "a-node" not in await _node_ids(mesh)


async def test_agents_run_no_work_billed_to_a_tenant_for_an_unauthenticated_caller(mesh):
    task = agent_pb2.RunTaskRequest(
        task_id="attack-1",
        job_id="attack",
        precision=common_pb2.PRECISION_FP16,
        llm_batch=agent_pb2.LlmBatchWork(model="Qwen2.5-7B", batch=1, input_len=128, output_len=16),
    )
    sick = agent_pb2.SetDeviceHealthRequest(device_index=0, health=common_pb2.DEVICE_HEALTH_FAILED)
    big = agent_pb2.AllocateMemoryRequest(device_index=0, bytes=60 * GIB)
    async with grpc.aio.insecure_channel(mesh.agent.address) as ch:
        agent = agent_pb2_grpc.AgentServiceStub(ch)
        await _refused(agent.RunTask(task, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
        await _refused(agent.SetDeviceHealth(sick, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
        await _refused(agent.AllocateMemory(big, metadata=BARE), grpc.StatusCode.UNAUTHENTICATED)
    # Holding a mesh key is not enough: only the scheduler and the evaluator give agents work.
    for identity in ("gateway", "registry", "metering", "adapter", "agent"):
        tenant = () if identity == "agent" else BARE[:1]
        async with service_channel(mesh.agent.address, identity=identity) as ch:
            agent = agent_pb2_grpc.AgentServiceStub(ch)
            for call in (
                agent.RunTask(task, metadata=tenant),
                agent.SetDeviceHealth(sick),
                agent.AllocateMemory(big, metadata=tenant),
            ):
                await _refused(call, grpc.StatusCode.PERMISSION_DENIED, "may be called only by")
    async with service_channel(mesh.agent.address, identity="scheduler") as ch:
        info = await agent_pb2_grpc.AgentServiceStub(ch).GetNodeInfo(agent_pb2.GetNodeInfoRequest())
    assert all(d.health == common_pb2.DEVICE_HEALTH_HEALTHY for d in info.devices)
    assert all(d.memory_used_bytes == 0 for d in info.devices)
    async with grpc.aio.insecure_channel(mesh.gateway.address) as gw:
        usage = await metering_pb2_grpc.MeteringServiceStub(gw).ListUsage(
            metering_pb2.ListUsageRequest(tenant="alpha"), metadata=OPS
        )
    assert not [r for r in usage.records if r.job_id == "attack"]
    # The control: the scheduler's key runs the same task for alpha, and alpha is billed.
    async with service_channel(mesh.agent.address, identity="scheduler") as ch:
        done = await agent_pb2_grpc.AgentServiceStub(ch).RunTask(task, metadata=BARE[:1])
    assert done.virtual_end_s > done.virtual_start_s

    async def billed() -> bool:
        async with grpc.aio.insecure_channel(mesh.gateway.address) as gw:
            usage = await metering_pb2_grpc.MeteringServiceStub(gw).ListUsage(
                metering_pb2.ListUsageRequest(job_id="attack"), metadata=ALPHA
            )
        return bool(usage.records)

    await wait_for(billed, within=15, what="alpha billed for the scheduler's task")


async def test_tenants_do_not_see_agent_addresses(mesh):
    async with grpc.aio.insecure_channel(mesh.gateway.address) as gw:
        registry = registry_pb2_grpc.RegistryServiceStub(gw)
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(gw)
        listed = await registry.ListNodes(registry_pb2.ListNodesRequest(), metadata=BETA)
        got = await registry.GetNode(
            registry_pb2.GetNodeRequest(node_id="walk-node"), metadata=BETA
        )
        assert [n.node_id for n in listed.nodes] == ["walk-node"]
        assert listed.nodes[0].agent_address == "" and got.node.agent_address == ""
        assert listed.nodes[0].devices, "the rest of the node is still there"
        # A running job's placement names its node, not where the node listens.
        held = await scheduler.SubmitJob(
            scheduler_pb2.SubmitJobRequest(
                spec=scheduler_pb2.JobSpec(
                    model="Qwen2.5-7B",
                    chip="mtt-s4000",
                    devices=1,
                    precision=common_pb2.PRECISION_FP16,
                    kind=scheduler_pb2.JOB_KIND_EVALUATION,
                )
            ),
            metadata=BETA,
        )
        get = scheduler_pb2.GetJobRequest(job_id=held.job.job_id)

        async def placed() -> bool:
            job = (await scheduler.GetJob(get, metadata=BETA)).job
            return job.state == scheduler_pb2.JOB_STATE_RUNNING and bool(job.assignments)

        await wait_for(placed, within=20, what="the job placed")
        job = (await scheduler.GetJob(get, metadata=BETA)).job
        listed_jobs = await scheduler.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=BETA)
        for shown in (job, *listed_jobs.jobs):
            for a in shown.assignments:
                assert a.node_id == "walk-node" and a.agent_address == ""
        # An admin key, and the services themselves, still get the addresses.
        admin = await registry.ListNodes(registry_pb2.ListNodesRequest(), metadata=OPS)
        assert admin.nodes[0].agent_address == mesh.agent.address
    async with service_channel(mesh.registry.address, identity="scheduler") as ch:
        direct = await registry_pb2_grpc.RegistryServiceStub(ch).ListNodes(
            registry_pb2.ListNodesRequest(), metadata=(("x-pocgrid-tenant", "beta"),)
        )
    assert direct.nodes[0].agent_address == mesh.agent.address
    async with grpc.aio.insecure_channel(mesh.registry.address) as ch:
        await _refused(
            registry_pb2_grpc.RegistryServiceStub(ch).ListNodes(
                registry_pb2.ListNodesRequest(), metadata=BARE
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
