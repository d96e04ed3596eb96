"""The gateway's limits on what anyone may send: calls without valid credentials are rate-limited
per client address (gRPC and HTTP together), messages and HTTP bodies are bounded, and each
refusal names the limit."""

from __future__ import annotations

import dataclasses

import aiohttp
import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.error_details import error_details
from pocgrid.v1 import gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration

KEY = "limits-key"
AUTH = (("authorization", f"Bearer {KEY}"),)
WRONG = (("authorization", "Bearer guessed"),)


async def _gateway(common, closer, **overrides) -> GatewayServer:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    cfg = GatewayConfig(
        api_keys=f"{KEY}=acme", registry_addr=reg.address, openai_listen="127.0.0.1:0", **overrides
    )
    gw = GatewayServer(common, cfg)
    await gw.start()
    closer.append(gw)
    return gw


async def _who(stub, metadata) -> grpc.StatusCode:
    try:
        await stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_unauthenticated_calls_are_limited_per_peer(common, closer):
    gw = await _gateway(common, closer, unauthenticated_rate_per_s=0.01, unauthenticated_burst=3)
    assert gw.openai is not None
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        codes = [await _who(stub, WRONG) for _ in range(3)]
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=WRONG)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details()
        assert "unauthenticated requests from 127.0.0.1" in details
        assert "POCGRID_UNAUTHENTICATED_RATE_PER_S" in details
        # Clients back off by the RetryInfo the refusal carries, as for a tenant's limit.
        info = error_details(err.value)
        assert info.reason == "RATE_LIMITED_UNAUTHENTICATED"
        assert info.retry_after_s is not None and info.retry_after_s > 1
        assert info.metadata["peer"] == "127.0.0.1"
        # No key at all counts the same; a valid key is not held back by the peer's failures.
        assert await _who(stub, ()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _who(stub, AUTH) == grpc.StatusCode.OK
    # One budget per address across both ports: the HTTP endpoint refuses this peer too.
    async with aiohttp.ClientSession() as session:
        url = f"http://{gw.openai.address}/v1/models"
        async with session.get(url, headers={"Authorization": "Bearer guessed"}) as resp:
            assert resp.status == 429
            body = await resp.json()
            assert body["error"]["code"] == "RATE_LIMITED_UNAUTHENTICATED"
        async with session.get(url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 200


async def test_unauthenticated_http_calls_are_limited(common, closer):
    gw = await _gateway(common, closer, unauthenticated_rate_per_s=0.01, unauthenticated_burst=2)
    assert gw.openai is not None
    url = f"http://{gw.openai.address}/v1/models"
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(3):
            async with session.get(url) as resp:
                statuses.append(resp.status)
        assert statuses == [401, 401, 429]


async def test_oversized_messages_are_refused_naming_the_limit(common, closer):
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    async with service_channel(reg.address) as ch:
        catalogue = await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
            registry_pb2.ListChipsRequest()
        )
    # A gateway whose limit is half the whole catalogue's size (the registry's is the default).
    limit = catalogue.ByteSize() // 2
    assert limit >= 1024
    small = dataclasses.replace(common, max_message_bytes=limit)
    gw = GatewayServer(small, GatewayConfig(api_keys=f"{KEY}=acme", registry_addr=reg.address))
    await gw.start()
    closer.append(gw)
    async with grpc.aio.insecure_channel(
        gw.address, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    ) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        # A request over the gateway's limit: refused by gRPC before the gateway reads it.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetChip(registry_pb2.GetChipRequest(name="x" * (2 * limit)), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in err.value.details()
        # A response over it (the whole catalogue): the gateway does not relay it.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListChips(registry_pb2.ListChipsRequest(), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in err.value.details()
        # Calls within the limit still pass.
        chip = await stub.GetChip(registry_pb2.GetChipRequest(name="ascend-910b2"), metadata=AUTH)
        assert chip.chip.name == "ascend-910b2"


async def test_http_body_over_the_cap_is_413(common, closer):
    gw = await _gateway(common, closer, openai_max_body_bytes=4096)
    assert gw.openai is not None
    url = f"http://{gw.openai.address}/v1/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:
        body = {"model": "Qwen2.5-0.5B@ascend-910b2", "prompt": "p" * 8192, "max_tokens": 1}
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 413
            error = (await resp.json())["error"]
            assert "4096 bytes" in error["message"]
            assert "POCGRID_OPENAI_MAX_BODY_BYTES" in error["message"]
        # Under the cap the request is read (and refused for its own reason: no such node).
        body["prompt"] = "p" * 100
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status != 413
