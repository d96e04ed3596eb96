"""The core client interceptor's span for a server stream lasts as long as the stream."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pocgrid.metadata import TENANT_METADATA_KEY
from pocgrid.v1 import agent_pb2, agent_pb2_grpc
from services.core import rpc_context, telemetry
from services.core.interceptors import open_channel
from services.core.service_tokens import TOKEN_METADATA_KEY
from tests.conftest import mesh_credentials

pytestmark = pytest.mark.integration


class _GatedStream(agent_pb2_grpc.AgentServiceServicer):
    """Sends one token, waits for the test to open the gate, then ends as told."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: list[tuple[str, str]] = []

    async def Generate(self, request, context):
        metadata = dict(context.invocation_metadata())
        # The tenant travels inside the caller's signed token, never as a bare header.
        assert TENANT_METADATA_KEY not in metadata
        caller = mesh_credentials().verifier.verify(
            metadata.get(TOKEN_METADATA_KEY), "pocgrid.v1.AgentService"
        )
        self.seen.append((metadata.get("traceparent", ""), caller.tenant))
        yield agent_pb2.GenerateResponse(index=0)
        await self.gate.wait()
        if request.model == "fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "told to fail")
        yield agent_pb2.GenerateResponse(index=1, last=True)


@pytest.fixture
async def served():
    servicer = _GatedStream()  # type: ignore[abstract]  # only Generate is called
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    exporter = InMemorySpanExporter()
    provider = telemetry.create_tracer_provider("client", env={})
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    channel = open_channel(
        f"127.0.0.1:{port}", provider.get_tracer("t"), cap_s=10, signer=mesh_credentials().signer
    )
    yield servicer, agent_pb2_grpc.AgentServiceStub(channel), exporter
    await channel.close()
    await server.stop(0)


def _client_spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


async def test_span_ends_when_the_stream_ends(served, waiter):
    servicer, stub, exporter = served
    rpc_context.set_tenant("acme")
    call = stub.Generate(agent_pb2.GenerateRequest(model="ok"))
    first = await call.read()
    assert first.index == 0
    await asyncio.sleep(0.1)  # the stream is open and idle for a while
    assert _client_spans(exporter) == [], "span ended while the stream was still open"
    servicer.gate.set()
    second = await call.read()
    assert second.last and await call.read() is grpc.aio.EOF
    ended_ns = time.time_ns()
    await waiter(lambda: _client_spans(exporter), what="the client span to end")
    [span] = _client_spans(exporter)
    assert span.name == "pocgrid.v1.AgentService/Generate"
    assert span.end_time - span.start_time >= 100_000_000  # covers the idle 0.1 s
    assert span.end_time <= ended_ns + 1_000_000_000
    assert span.status.status_code is not StatusCode.ERROR
    # The server saw this span as its parent, and the caller's tenant (before, the channel
    # filed the interceptor under unary calls only and a stream carried neither).
    [(traceparent, tenant)] = servicer.seen
    assert traceparent.startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    assert tenant == "acme"


async def test_failed_and_cancelled_streams_end_their_span_with_the_code(served, waiter):
    servicer, stub, exporter = served
    failing = stub.Generate(agent_pb2.GenerateRequest(model="fail"))
    await failing.read()
    servicer.gate.set()
    with pytest.raises(grpc.aio.AioRpcError):
        await failing.read()
    await waiter(lambda: len(_client_spans(exporter)) == 1, what="the failed stream's span")
    [failed] = _client_spans(exporter)
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]

    servicer.gate.clear()
    abandoned = stub.Generate(agent_pb2.GenerateRequest(model="ok"))
    await abandoned.read()
    assert len(_client_spans(exporter)) == 1
    abandoned.cancel()
    await waiter(lambda: len(_client_spans(exporter)) == 2, what="the cancelled stream's span")
    cancelled = _client_spans(exporter)[1]
    assert cancelled.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
