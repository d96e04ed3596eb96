"""Agents against a real registry and nats-server: registration, restart, loss, vendor errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import nats
import pytest

from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    events_pb2,
    registry_pb2,
    registry_pb2_grpc,
)
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

LEASE = RegistryConfig(
    lease_ttl_ms=3000,  # room for event-loop stalls of a loaded CI machine
    heartbeat_interval_ms=200,
    lease_check_interval_ms=50,
    heartbeat_flush_interval_ms=100,
)


async def _node(address: str, node_id: str) -> registry_pb2.Node | None:
    async with service_channel(address) as ch:
        try:
            resp = await registry_pb2_grpc.RegistryServiceStub(ch).GetNode(
                registry_pb2.GetNodeRequest(node_id=node_id)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
    return resp.node


async def test_agent_registers_with_vendor_devices(common, closer):
    reg = RegistryServer(common, LEASE)
    await reg.start()
    closer.append(reg)
    agent = AgentServer(
        common,
        AgentConfig(chip="ascend-910b2", devices=2, node_id="npu-node", registry_addr=reg.address),
    )
    await agent.start()
    closer.append(agent)
    await wait_for(lambda: agent.lease.registered.is_set(), what="registration")
    node = await _node(reg.address, "npu-node")
    assert node.state == registry_pb2.NODE_STATE_READY
    assert node.runtime_name == "CANN" and node.collective_library == "HCCL"
    assert [d.device_id for d in node.devices] == ["npu:0", "npu:1"]

    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        info = await stub.GetNodeInfo(agent_pb2.GetNodeInfoRequest())
        total = info.devices[0].memory_total_bytes
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AllocateMemory(
                agent_pb2.AllocateMemoryRequest(device_index=0, bytes=total * 2)
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "aclrtMalloc" in err.value.details()
        ok = await stub.AllocateMemory(
            agent_pb2.AllocateMemoryRequest(device_index=0, bytes=1 << 30)
        )
        freed = await stub.FreeMemory(agent_pb2.FreeMemoryRequest(allocation_id=ok.allocation_id))
        assert freed.device_free_bytes > ok.device_free_bytes
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AllocateMemory(agent_pb2.AllocateMemoryRequest(device_index=9, bytes=1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("device_index")
        # Device health reaches the registry through the next heartbeat.
        await stub.SetDeviceHealth(
            agent_pb2.SetDeviceHealthRequest(
                device_index=1, health=common_pb2.DEVICE_HEALTH_FAILED, reason="HBM ECC error"
            )
        )

    async def failed_in_registry() -> bool:
        node = await _node(reg.address, "npu-node")
        return node.devices[1].health == common_pb2.DEVICE_HEALTH_FAILED

    await wait_for(failed_in_registry, what="device health in the registry")


async def test_agent_reregisters_after_registry_restart(common, closer, tmp_path):
    reg = RegistryServer(common, LEASE)
    await reg.start()
    port = reg.port
    agent = AgentServer(
        common,
        AgentConfig(chip="mlu370-x8", devices=1, node_id="mlu-node", registry_addr=reg.address),
    )
    await agent.start()
    closer.append(agent)
    await wait_for(lambda: agent.lease.registrations == 1, what="first registration")
    await reg.stop()
    # A registry that lost its database entirely (new data dir) on the same address.
    fresh = common.__class__(
        **{
            **{f: getattr(common, f) for f in common.__dataclass_fields__},
            "listen": f"127.0.0.1:{port}",
            "data_dir": tmp_path / "fresh",
        }
    )
    reg2 = RegistryServer(fresh, LEASE)
    await reg2.start()
    closer.insert(0, reg2)
    await wait_for(lambda: agent.lease.registrations >= 2, what="re-registration")
    node = await _node(reg2.address, "mlu-node")
    assert node is not None and node.state == registry_pb2.NODE_STATE_READY


async def test_sigkilled_agent_is_marked_lost(common, closer, nats_server):
    reg = RegistryServer(common, LEASE)
    await reg.start()
    closer.append(reg)
    nc = await nats.connect(nats_server.url)
    lost: list[events_pb2.NodeLost] = []

    async def on_lost(msg):
        lost.append(events_pb2.NodeLost.FromString(msg.data))

    await nc.subscribe("registry.node.lost", cb=on_lost)
    env = {
        **os.environ,
        "POCGRID_NATS_URL": nats_server.url,
        "POCGRID_LOG_FORMAT": "json",
        "POCGRID_DATA_DIR": str(common.data_dir),
        "POCGRID_MESH_KEYS_DIR": common.mesh_keys_dir,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.agent",
        "--chip",
        "dcu-k100-ai",
        "--devices",
        "4",
        "--node-id",
        "dcu-node",
        "--registry",
        reg.address,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def ready() -> bool:
            node = await _node(reg.address, "dcu-node")
            return node is not None and node.state == registry_pb2.NODE_STATE_READY

        await wait_for(ready, within=30, what="agent process registered")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await wait_for(
            lambda: bool(lost),
            within=LEASE.lease_ttl_ms / 1000 + 2,
            what="NodeLost within the lease",
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert lost[0].node_id == "dcu-node" and lost[0].chip == "dcu-k100-ai"
    assert lost[0].event_id
    node = await _node(reg.address, "dcu-node")
    assert node.state == registry_pb2.NODE_STATE_LOST
    await nc.close()
