"""Spans and metrics leave the services over OTLP to a receiver the test starts, and metrics are
scrapeable as Prometheus.

The receiver is a real gRPC server implementing OTLP's TraceService and MetricsService; the
services are given ``OTEL_EXPORTER_OTLP_ENDPOINT=127.0.0.1:<port>``, the bare host:port form
the OpenTelemetry convention allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import urllib.request
from typing import Any

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.core.config import CommonConfig
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for
from tests.otlp import Receiver

pytestmark = pytest.mark.integration

KEY = "otlp-key"
LEASE = RegistryConfig(
    lease_ttl_ms=1000,
    heartbeat_interval_ms=100,
    lease_check_interval_ms=50,
    heartbeat_flush_interval_ms=100,
)


async def test_spans_and_metrics_reach_an_otlp_receiver(
    common: CommonConfig, otlp_receiver: tuple[Receiver, int], closer: list[object]
):
    rec, port = otlp_receiver
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{port}"}
    common = dataclasses.replace(common, metrics_export_interval_ms=200)
    registry = RegistryServer(common, LEASE, env=env)
    await registry.start()
    closer.append(registry)
    agent = AgentServer(
        common,
        AgentConfig(
            chip="ascend-910b2", devices=2, node_id="npu-0", registry_addr=registry.address
        ),
        env=env,
    )
    await agent.start()
    closer.append(agent)
    gateway = GatewayServer(
        common,
        GatewayConfig(api_keys=f"{KEY}=alpha", registry_addr=registry.address),
        env=env,
    )
    await gateway.start()
    closer.append(gateway)
    assert agent.lease is not None
    await asyncio.wait_for(agent.lease.registered.wait(), 10)

    async with grpc.aio.insecure_channel(gateway.address) as ch:
        await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
            registry_pb2.ListChipsRequest(), metadata=(("authorization", f"Bearer {KEY}"),)
        )
    async with service_channel(agent.address, identity="scheduler") as ch:
        await agent_pb2_grpc.AgentServiceStub(ch).GetNodeInfo(agent_pb2.GetNodeInfoRequest())
    await asyncio.sleep(0.6)  # several heartbeats
    for provider in (registry.tracer_provider, agent.tracer_provider, gateway.tracer_provider):
        # In a thread: the exporter's blocking call is answered by the receiver on this loop.
        await asyncio.to_thread(provider.force_flush)

    def by_service(name: str) -> list[dict[str, Any]]:
        return [s for s in rec.spans if s["resource"].get("service.name") == name]

    await wait_for(
        lambda: bool(by_service("registry")) and bool(by_service("gateway")), what="spans"
    )
    # One trace across gateway and registry: the registry's server span is a child of the
    # gateway's span.
    list_chips = [s for s in by_service("registry") if s["name"].endswith("/ListChips")]
    assert list_chips
    gateway_ids = {s["span_id"] for s in by_service("gateway")}
    assert list_chips[0]["parent"] in gateway_ids
    # Agents' spans name their node and chip.
    await wait_for(lambda: bool(by_service("agent")), what="agent spans")
    info = next(s for s in by_service("agent") if s["name"].endswith("/GetNodeInfo"))
    assert info["resource"]["pocgrid.node_id"] == "npu-0"
    assert info["resource"]["pocgrid.chip"] == "ascend-910b2"
    # Heartbeats are not traced by default, on either side.
    assert not [s for s in rec.spans if "Heartbeat" in s["name"]]

    await wait_for(
        lambda: ("registry", "rpc.server.duration") in rec.metric_names,
        within=10,
        what="the registry's RPC duration metric",
    )


async def test_metrics_are_scrapeable_as_prometheus(common: CommonConfig, closer: list[object]):
    common = dataclasses.replace(common, metrics_listen="127.0.0.1:0")
    registry = RegistryServer(common, LEASE, env={})
    await registry.start()
    closer.append(registry)
    async with service_channel(registry.address) as ch:
        await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(registry_pb2.ListChipsRequest())
    url = f"http://127.0.0.1:{registry.metrics.prometheus_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    counts = [
        ln
        for ln in text.splitlines()
        if ln.startswith("rpc_server_duration_milliseconds_count")
        and 'rpc_method="ListChips"' in ln
    ]
    assert counts, text[:2000]
    assert float(counts[0].rsplit(" ", 1)[1]) >= 1


def test_an_unreachable_collector_does_not_slow_the_cli(monkeypatch: pytest.MonkeyPatch):
    """A collector that accepts connections and never answers: the command's span export gives
    up after the CLI's bound (0.5 s); the exporter's own default would wait 10 s."""
    from pocgrid.cli.main import CLI_EXPORT_TIMEOUT_S, _command_span

    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(16)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"127.0.0.1:{sink.getsockname()[1]}")
        started = time.monotonic()
        with _command_span("status"):
            pass
        elapsed = time.monotonic() - started
    # Waiting on the network, not the CPU: the bound holds on a loaded machine too (the margin
    # is for the exporter's import and thread start).
    assert elapsed < CLI_EXPORT_TIMEOUT_S + 2.5, elapsed
