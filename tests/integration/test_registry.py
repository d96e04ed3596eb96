"""Registry against a real nats-server and real gRPC: registration, heartbeats, leases, restart."""

from __future__ import annotations

import grpc
import nats
import pytest

from pocgrid.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

FAST = RegistryConfig(
    lease_ttl_ms=800,
    heartbeat_interval_ms=200,
    lease_check_interval_ms=50,
    heartbeat_flush_interval_ms=100,
)


def _register_request(node_id: str = "node-a", chip: str = "ascend-910b2", n: int = 2):
    return registry_pb2.RegisterNodeRequest(
        node_id=node_id,
        chip=chip,
        agent_address="127.0.0.1:1",
        runtime_name="CANN",
        devices=[
            registry_pb2.Device(device_id=f"npu:{i}", index=i, memory_total_bytes=64 << 30)
            for i in range(n)
        ],
    )


async def _registry(common, config=FAST) -> RegistryServer:
    server = RegistryServer(common, config)
    await server.start()
    return server


async def test_register_list_and_filters(common, closer):
    reg = await _registry(common)
    closer.append(reg)
    async with service_channel(reg.address, identity="agent") as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        public = registry_pb2_grpc.RegistryServiceStub(ch)
        resp = await lease.RegisterNode(_register_request())
        assert resp.node.state == registry_pb2.NODE_STATE_READY
        assert resp.registry_epoch
        await lease.RegisterNode(_register_request("node-b", "mlu370-x8", 1))
        nodes = (await public.ListNodes(registry_pb2.ListNodesRequest())).nodes
        assert [n.node_id for n in nodes] == ["node-a", "node-b"]
        only = await public.ListNodes(registry_pb2.ListNodesRequest(vendor_family="cambricon"))
        assert [n.node_id for n in only.nodes] == ["node-b"]
        node = (await public.GetNode(registry_pb2.GetNodeRequest(node_id="node-a"))).node
        assert node.devices[1].device_id == "npu:1"
        assert node.devices[1].health == common_pb2.DEVICE_HEALTH_HEALTHY


async def test_missed_lease_marks_lost_and_publishes(common, closer, nats_server):
    reg = await _registry(common)
    closer.append(reg)
    nc = await nats.connect(nats_server.url)
    received: list[events_pb2.NodeLost] = []

    async def on_msg(msg):
        received.append(events_pb2.NodeLost.FromString(msg.data))

    await nc.subscribe("registry.node.lost", cb=on_msg)
    async with service_channel(reg.address, identity="agent") as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        public = registry_pb2_grpc.RegistryServiceStub(ch)
        await lease.RegisterNode(_register_request())
        await lease.Heartbeat(registry_pb2.HeartbeatRequest(node_id="node-a", sequence=1))
        await wait_for(lambda: bool(received), within=5, what="NodeLost event")
        node = (await public.GetNode(registry_pb2.GetNodeRequest(node_id="node-a"))).node
        assert node.state == registry_pb2.NODE_STATE_LOST
        assert received[0].node_id == "node-a"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.Heartbeat(registry_pb2.HeartbeatRequest(node_id="node-a", sequence=2))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await nc.close()


async def test_state_survives_restart(common, closer):
    reg = await _registry(common)
    async with service_channel(reg.address, identity="agent") as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        await lease.RegisterNode(_register_request())
        await lease.Heartbeat(
            registry_pb2.HeartbeatRequest(
                node_id="node-a",
                sequence=1,
                devices=[
                    registry_pb2.DeviceStatus(
                        index=1,
                        health=common_pb2.DEVICE_HEALTH_HEALTHY,
                        memory_used_bytes=123 << 20,
                    )
                ],
            )
        )
    first_epoch = reg.pool.epoch
    await reg.stop()  # flushes the batched heartbeat
    reg2 = await _registry(common)
    closer.append(reg2)
    assert reg2.pool.epoch != first_epoch
    async with service_channel(reg2.address, identity="agent") as ch:
        node = (
            await registry_pb2_grpc.RegistryServiceStub(ch).GetNode(
                registry_pb2.GetNodeRequest(node_id="node-a")
            )
        ).node
    assert node.chip == "ascend-910b2" and len(node.devices) == 2
    assert [d.memory_used_bytes for d in node.devices] == [0, 123 << 20]
    assert node.last_heartbeat_at.ToDatetime() >= node.registered_at.ToDatetime()


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (registry_pb2.RegisterNodeRequest(chip="ascend-910b2"), "INVALID_ARGUMENT", "node_id"),
        (_register_request(chip="no-such-chip"), "INVALID_ARGUMENT", "chip"),
        (
            registry_pb2.RegisterNodeRequest(
                node_id="n", chip="ascend-910b2", agent_address="nohost"
            ),
            "INVALID_ARGUMENT",
            "agent_address",
        ),
    ],
)
async def test_register_rejects_bad_input(common, closer, request_, code, field):
    reg = await _registry(common)
    closer.append(reg)
    async with service_channel(reg.address, identity="agent") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_pb2_grpc.NodeLeaseServiceStub(ch).RegisterNode(request_)
    assert err.value.code().name == code
    assert err.value.details().startswith(field)


async def test_malformed_heartbeat_and_unknown_ids(common, closer):
    reg = await _registry(common)
    closer.append(reg)
    async with service_channel(reg.address, identity="agent") as ch:
        lease = registry_pb2_grpc.NodeLeaseServiceStub(ch)
        public = registry_pb2_grpc.RegistryServiceStub(ch)
        await lease.RegisterNode(_register_request())
        bad = registry_pb2.HeartbeatRequest(
            node_id="node-a",
            sequence=1,
            devices=[registry_pb2.DeviceStatus(index=0), registry_pb2.DeviceStatus(index=0)],
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.Heartbeat(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "devices[1].index" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.Heartbeat(registry_pb2.HeartbeatRequest(node_id="node-a", sequence=0))
        assert err.value.details().startswith("sequence")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.Heartbeat(registry_pb2.HeartbeatRequest(node_id="ghost", sequence=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "ghost" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await public.GetChip(registry_pb2.GetChipRequest(name="ascend-9100"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await public.GetNode(registry_pb2.GetNodeRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("node_id")
        # Larger than the server's message limit: refused by gRPC itself, server unharmed.
        huge = _register_request()
        huge.labels["x"] = "y" * (common.max_message_bytes + 10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.RegisterNode(huge)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        too_many = _register_request()
        for i in range(100):
            too_many.labels[f"k{i}"] = "v"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lease.RegisterNode(too_many)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("labels")
        assert (await public.ListChips(registry_pb2.ListChipsRequest())).chips
