"""Readiness covers NATS and every consumer: with nats-server down a service reports it on gRPC
health (and the gateway's CheckServices), a publisher keeps answering RPCs, a consumer that
cannot recover turns its service NOT_SERVING, and all of it recovers when NATS is back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devmesh.nats_server import NatsServer, _accepts, find_nats_server
from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.core.bus import BUS_HEALTH, EventMeta, consumer_health_name
from services.core.config import CommonConfig
from services.core.service import LIVENESS, Service
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
KEY = "test-key-123"
AUTH = (("authorization", f"Bearer {KEY}"),)


class UsageSink(Service):
    """A service whose job is a consumer, like metering."""

    name = "sink"

    def __init__(self, common: CommonConfig) -> None:
        # It plays metering's part, so it has metering's mesh identity (no "sink" key exists).
        super().__init__(dataclasses.replace(common, mesh_identity="metering"), env={})
        self.seen: list[str] = []

    async def on_start(self, server: grpc.aio.Server) -> None:
        await self.connect_bus()

    async def on_serving(self) -> None:
        assert self.bus is not None
        self.bus.consume("POCGRID_USAGE", "sink", "usage.>", events_pb2.UsageRecorded, self.handle)

    async def handle(self, event: events_pb2.UsageRecorded, meta: EventMeta) -> None:
        self.seen.append(meta.event_id)


def _fast(common: CommonConfig) -> CommonConfig:
    return dataclasses.replace(
        common,
        consumer_fetch_wait_s=0.2,
        consumer_backoff_initial_s=0.05,
        consumer_backoff_max_s=0.2,
        consumer_unhealthy_after=3,
    )


def _health(address: str) -> Callable[[str], Awaitable[str]]:
    async def check(name: str) -> str:
        async with service_channel(address) as ch:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=2
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    return check


def _restart_same_port(server: NatsServer) -> None:
    """Start nats-server again on the port (and store) the clients know, as an operator would."""
    log = (server.data_dir / "nats-server.log").open("ab")
    server.proc = subprocess.Popen(
        [
            find_nats_server(),
            "-a",
            server.host,
            "-p",
            str(server.port),
            "-js",
            "-sd",
            str(server.data_dir / "jetstream"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()


async def _stop(server: NatsServer) -> None:
    assert server.proc is not None
    server.proc.terminate()
    server.proc.wait(timeout=10)


async def test_nats_down_is_reported_and_recovers(
    common: CommonConfig,
    nats_server: NatsServer,
    closer: list[object],
):
    common = _fast(common)
    sink = UsageSink(common)
    await sink.start()
    closer.append(sink)
    registry = RegistryServer(common, RegistryConfig())
    await registry.start()
    closer.append(registry)
    gw = GatewayServer(
        common,
        GatewayConfig(api_keys=f"{KEY}=acme", registry_addr=registry.address),
    )
    await gw.start()
    closer.append(gw)
    sink_health = _health(sink.address)
    reg_health = _health(registry.address)
    consumer = consumer_health_name("sink")

    async def statuses(check: Callable[[str], Awaitable[str]], *names: str) -> list[str]:
        return [await check(n) for n in names]

    async def gateway_view() -> dict[str, tuple[bool, str, str]]:
        async with grpc.aio.insecure_channel(gw.address) as ch:
            resp = await gateway_pb2_grpc.GatewayServiceStub(ch).CheckServices(
                gateway_pb2.CheckServicesRequest(), metadata=AUTH, timeout=5
            )
        return {s.name: (s.healthy, s.status, s.bus_status) for s in resp.services}

    await wait_for(
        lambda: _all(sink_health, ["", BUS_HEALTH, consumer], SERVING), what="the sink healthy"
    )
    assert await statuses(reg_health, "", BUS_HEALTH) == [SERVING, SERVING]
    view = await gateway_view()
    assert view["registry"] == (True, SERVING, SERVING)
    assert view["gateway"] == (True, SERVING, "")

    await _stop(nats_server)

    # A publisher: the bus is reported down, its RPCs are still answered.
    await wait_for(
        lambda: _is(reg_health, BUS_HEALTH, NOT_SERVING), what="registry's bus NOT_SERVING"
    )
    assert await reg_health("") == SERVING
    async with grpc.aio.insecure_channel(gw.address) as ch:
        chips = await registry_pb2_grpc.RegistryServiceStub(ch).ListChips(
            registry_pb2.ListChipsRequest(), metadata=AUTH, timeout=5
        )
    assert chips.chips
    # A consumer service: past the bound it is not doing its job, and says so.
    await wait_for(lambda: _is(sink_health, consumer, NOT_SERVING), what="the consumer unhealthy")
    await wait_for(lambda: _is(sink_health, "", NOT_SERVING), what="the sink NOT_SERVING")
    assert await sink_health(BUS_HEALTH) == NOT_SERVING
    # Liveness stays SERVING: restarting the process would not bring NATS back.
    assert await sink_health(LIVENESS) == SERVING
    view = await gateway_view()
    assert view["registry"] == (False, SERVING, NOT_SERVING)
    # And `pocgrid status`, as an operator runs it, says so (and exits 1).
    rc, out = await _status_json(gw.address)
    assert rc == 1
    by_name = {s["name"]: s for s in out["services"]}
    assert by_name["registry"] == {
        "name": "registry",
        "healthy": False,
        "status": SERVING,
        "bus": NOT_SERVING,
    }

    _restart_same_port(nats_server)
    await wait_for(lambda: _accepts(nats_server.host, nats_server.port), what="nats-server back")
    await wait_for(
        lambda: _all(sink_health, ["", BUS_HEALTH, consumer], SERVING),
        within=20,
        what="the sink SERVING again",
    )
    await wait_for(lambda: _is(reg_health, BUS_HEALTH, SERVING), what="registry's bus SERVING")
    view = await gateway_view()
    assert view["registry"] == (True, SERVING, SERVING)
    rc, out = await _status_json(gw.address)
    buses = {s["name"]: s["bus"] for s in out["services"]}
    assert (buses["gateway"], buses["registry"]) == ("", SERVING)

    # And the consumer consumes again.
    assert registry.bus is not None
    await registry.bus.publish(
        "usage.recorded", events_pb2.UsageRecorded(event_id="after"), "after"
    )
    await wait_for(lambda: "after" in sink.seen, what="an event after NATS came back")


async def _status_json(gateway: str) -> tuple[int, dict[str, Any]]:
    # A child process, as an operator runs it (and with a stdout of its own: this process's
    # services log to ours).
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pocgrid.cli.main",
        "--gateway",
        gateway,
        "--api-key",
        KEY,
        "--timeout",
        "10",
        "status",
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), json.loads(out)


async def _is(check: Callable[[str], Awaitable[str]], name: str, status: str) -> bool:
    return await check(name) == status


async def _all(check: Callable[[str], Awaitable[str]], names: list[str], status: str) -> bool:
    return all([await check(n) == status for n in names])


async def test_a_hung_nats_server_is_noticed_by_its_pings(
    common: CommonConfig, nats_server: NatsServer, closer: list[object]
):
    # A stopped (SIGSTOP) server keeps its sockets open: only unanswered pings reveal it.
    common = dataclasses.replace(_fast(common), nats_ping_interval_s=1.0)
    registry = RegistryServer(common, RegistryConfig())
    await registry.start()
    closer.append(registry)
    health = _health(registry.address)
    assert nats_server.proc is not None
    pid = nats_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: _is(health, BUS_HEALTH, NOT_SERVING), what="bus NOT_SERVING")
        assert await health("") == SERVING
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_for(lambda: _is(health, BUS_HEALTH, SERVING), within=20, what="bus SERVING")
