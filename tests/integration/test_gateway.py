"""The gateway in front of a real registry: auth, rate limits, routing, reflection, tracing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.config import GatewayConfig
from gateway.routing import GATEWAY_SERVICE, rpc_path
from gateway.service import GatewayServer
from pocgrid.v1 import gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import mesh_credentials, service_channel

pytestmark = pytest.mark.integration

KEY = "test-key-123"
AUTH = (("authorization", f"Bearer {KEY}"),)
REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
NODE_LEASE = registry_pb2.DESCRIPTOR.services_by_name["NodeLeaseService"]


async def _mesh(common, closer, span_processor=None, gateway_exports=True, **gw_overrides):
    procs = [span_processor] if span_processor else []
    reg = RegistryServer(common, RegistryConfig(), span_processors=procs)
    await reg.start()
    closer.append(reg)
    cfg = GatewayConfig(api_keys=f"{KEY}=acme", registry_addr=reg.address, **gw_overrides)
    gw = GatewayServer(common, cfg, span_processors=procs if gateway_exports else [])
    await gw.start()
    closer.append(gw)
    return reg, gw


async def test_routes_public_and_hides_internal(common, closer):
    _, gw = await _mesh(common, closer)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        chips = await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
            registry_pb2.ListChipsRequest(domestic_only=True), metadata=AUTH
        )
        assert chips.chips and all(c.domestic for c in chips.chips)
        who = await gateway_pb2_grpc.GatewayServiceStub(ch).WhoAmI(
            gateway_pb2.WhoAmIRequest(), metadata=AUTH
        )
        assert who.tenant == "acme"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_pb2_grpc.NodeLeaseServiceStub(ch).Heartbeat(
                registry_pb2.HeartbeatRequest(node_id="x", sequence=1), metadata=AUTH
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Errors from the backend reach the client unchanged.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_pb2_grpc.RegistryServiceStub(ch).GetChip(
                registry_pb2.GetChipRequest(name="nope"), metadata=AUTH
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


CORRUPT = b"\xff\xff\xff\xff not a protobuf message"


@pytest.mark.parametrize(
    "method",
    [
        rpc_path(REGISTRY, "GetChip"),  # forwarded: the registry decodes it
        rpc_path(GATEWAY_SERVICE, "WhoAmI"),  # the gateway's own
    ],
)
async def test_corrupt_request_bytes_are_invalid_argument(common, closer, method):
    reg, gw = await _mesh(common, closer)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        call = ch.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(CORRUPT, metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("request: is not a valid request message for")
        assert method in err.value.details()
        # Admission comes first: without a key the same bytes are UNAUTHENTICATED.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(CORRUPT)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A service reached directly answers the same way, and keeps serving.
    async with service_channel(reg.address, identity="agent") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(rpc_path(REGISTRY, "ListChips"))(CORRUPT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chips = await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
            registry_pb2.ListChipsRequest()
        )
        assert chips.chips


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing credentials"),
        ((("authorization", "Bearer wrong"),), "unknown API key"),
        ((("authorization", KEY),), "Bearer"),
    ],
)
async def test_unauthenticated(common, closer, metadata, message):
    _, gw = await _mesh(common, closer)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
                registry_pb2.ListChipsRequest(), metadata=metadata
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert message in err.value.details()


async def test_rate_limited(common, closer):
    _, gw = await _mesh(common, closer, rate_limit_per_s=1.0, rate_limit_burst=3)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        for _ in range(3):
            await stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "acme" in err.value.details() and "retry in" in err.value.details()


async def test_reflection_only_client(common, closer):
    """A generic client that knows nothing but the gateway's address and an API key."""
    _, gw = await _mesh(common, closer)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def ask(**kw):
            async for resp in refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(**kw)])
            ):
                return resp

        services = [s.name for s in (await ask(list_services="")).list_services_response.service]
        assert REGISTRY.full_name in services
        assert NODE_LEASE.full_name not in services
        files = (
            await ask(file_containing_symbol=REGISTRY.full_name)
        ).file_descriptor_response.file_descriptor_proto
        pool = descriptor_pool.DescriptorPool()
        protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in files]
        pending = {p.name: p for p in protos}
        while pending:  # add in dependency order
            for name, proto in list(pending.items()):
                if all(dep not in pending for dep in proto.dependency):
                    pool.Add(proto)
                    del pending[name]
        method = pool.FindServiceByName(REGISTRY.full_name).FindMethodByName("GetChip")
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        call = ch.unary_unary(
            rpc_path(REGISTRY, "GetChip"),
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        resp = await call(req_cls(name="ascend-910b2"), metadata=AUTH)
        assert resp.chip.vendor_family == "ascend"


async def test_one_trace_across_gateway_and_registry(common, closer, spans, span_processor):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    from services.core.interceptors import open_channel

    _, gw = await _mesh(common, closer, span_processor)
    client_provider = TracerProvider()
    client_provider.add_span_processor(span_processor)
    tracer = client_provider.get_tracer("client")
    with tracer.start_as_current_span("client-call", kind=SpanKind.CLIENT) as root:
        ch = open_channel(gw.address, tracer, cap_s=5, signer=mesh_credentials().signer)
        await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
            registry_pb2.ListChipsRequest(), metadata=AUTH
        )
        await ch.close()
    trace_id = root.get_span_context().trace_id
    finished = spans.get_finished_spans()
    by_service = {
        s.resource.attributes["service.name"]: s
        for s in finished
        if s.context.trace_id == trace_id and s.kind == SpanKind.SERVER
    }
    assert {"gateway", "registry"} <= set(by_service)
    assert by_service["registry"].parent.span_id == by_service["gateway"].context.span_id


async def test_gateway_exporting_nothing_still_starts_and_passes_the_trace(
    common, closer, spans, span_processor
):
    """A gateway with no span exporter builds no spans, but downstream spans still join one
    trace: the caller's when it sent a traceparent, a new sampled one when it did not."""
    from opentelemetry.trace import SpanKind

    from services.core import telemetry

    _, gw = await _mesh(common, closer, span_processor, gateway_exports=False)
    caller = telemetry.unrecorded_span(None).get_span_context()
    traced = (*AUTH, *telemetry.trace_headers(telemetry.unrecorded_span(None)))
    caller_trace = int(dict(traced)["traceparent"].split("-")[1], 16)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        await stub.ListChips(registry_pb2.ListChipsRequest(), metadata=traced)
        await stub.ListChips(registry_pb2.ListChipsRequest(), metadata=AUTH)
    finished = spans.get_finished_spans()
    assert not [s for s in finished if s.resource.attributes["service.name"] == "gateway"]
    registry_spans = [
        s
        for s in finished
        if s.kind == SpanKind.SERVER and s.name.endswith("RegistryService/ListChips")
    ]
    assert len(registry_spans) == 2
    joined, started = registry_spans
    assert joined.context.trace_id == caller_trace != caller.trace_id
    for span in (joined, started):
        assert span.parent is not None and span.parent.is_valid and span.parent.is_remote
        assert span.context.trace_flags.sampled
    assert started.context.trace_id != caller_trace
