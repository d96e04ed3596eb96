"""Structured error details (google.rpc.Status) from real servers, through the gateway too."""

from __future__ import annotations

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.error_details import FieldViolation, error_details
from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration

KEY = "test-key-123"
AUTH = (("authorization", f"Bearer {KEY}"),)


async def _registry_and_gateway(common, closer, **gateway):
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    gw = GatewayServer(
        common, GatewayConfig(api_keys=f"{KEY}=acme", registry_addr=reg.address, **gateway)
    )
    await gw.start()
    closer.append(gw)
    return reg, gw


async def _failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_the_gateway_forwards_field_violations_and_resources_intact(common, closer):
    reg, gw = await _registry_and_gateway(common, closer)
    bad = registry_pb2.ListNodesRequest(page=common_pb2.PageRequest(page_size=5000))
    missing = registry_pb2.GetChipRequest(name="nope")
    seen = {}
    for where, address, metadata in (("direct", reg.address, ()), ("gateway", gw.address, AUTH)):
        async with service_channel(address) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            seen[where] = (
                await _failure(stub.ListNodes(bad, metadata=metadata)),
                await _failure(stub.GetChip(missing, metadata=metadata)),
            )
    for invalid, not_found in seen.values():
        info = error_details(invalid)
        assert info.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.field_violations == (FieldViolation("page.page_size", "must be <= 1000"),)
        info = error_details(not_found)
        assert info.code == grpc.StatusCode.NOT_FOUND
        assert (info.resource_type, info.resource_name) == ("chip", "nope")
    # Byte for byte what the registry sent.
    for direct, through in zip(seen["direct"], seen["gateway"], strict=True):
        assert (
            dict(through.trailing_metadata())["grpc-status-details-bin"]
            == dict(direct.trailing_metadata())["grpc-status-details-bin"]
        )


async def test_rate_limit_carries_the_retry_delay(common, closer):
    _, gw = await _registry_and_gateway(common, closer, rate_limit_per_s=2.0, rate_limit_burst=1)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        await stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=AUTH)
        limited = await _failure(stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=AUTH))
        unknown = await _failure(
            stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=(("authorization", "Bearer x"),))
        )
    info = error_details(limited)
    assert info.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.reason == "RATE_LIMITED" and info.metadata["tenant"] == "acme"
    # 2 requests/s with the bucket just emptied: about half a second to the next token.
    assert info.retry_after_s is not None and 0.3 < info.retry_after_s <= 0.5
    assert error_details(unknown).reason == "API_KEY_UNKNOWN"


async def test_agent_errors_carry_the_vendor_code_and_the_missing_tenant(common, closer):
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    agent = AgentServer(
        common,
        AgentConfig(chip="kunlun-r200", devices=1, node_id="k-1", registry_addr=reg.address),
    )
    await agent.start()
    closer.append(agent)
    big = agent_pb2.RunTaskRequest(
        task_id="big",
        precision=common_pb2.PRECISION_FP16,
        llm_batch=agent_pb2.LlmBatchWork(
            model="Llama-3.1-70B", batch=1, input_len=128, output_len=16
        ),
    )
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        oom = await _failure(stub.RunTask(big, metadata=(("x-pocgrid-tenant", "acme"),)))
        anonymous = await _failure(stub.RunTask(big))
    info = error_details(oom)
    assert info.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.reason == "DEVICE_OUT_OF_MEMORY" and info.domain == "pocgrid"
    assert info.metadata["vendor_symbol"] == "XPUERR_NOMEM"
    assert info.metadata["vendor_code"] in info.message  # the same code the text shows
    assert int(info.metadata["vendor_code"]) != 0
    assert int(info.metadata["requested_bytes"]) > int(info.metadata["free_bytes"])
    info = error_details(anonymous)
    assert info.code == grpc.StatusCode.UNAUTHENTICATED
    assert info.reason == "TENANT_REQUIRED"
    assert info.metadata["metadata_key"] == "x-pocgrid-tenant"
