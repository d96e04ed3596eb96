"""One evaluation through the gateway is one trace across the mesh, exported over OTLP.

Every service exports to an OTLP receiver the test starts (``OTEL_EXPORTER_OTLP_ENDPOINT``, as
an operator would point them at a collector). The evaluation's trace must be one tree, rooted at
the gateway, with spans of the gateway, the evaluator, the scheduler (which places each run), the
agents and metering, joined across gRPC (each server span's parent is its caller's span) and NATS
(metering's processing of the agents' usage is a child of the agent's publish), and the services'
log lines under it name its trace id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from typing import Any

import grpc
import pytest
import structlog

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.v1 import evaluator_pb2, evaluator_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.core.logging import configure_logging
from services.evaluator.config import EvaluatorConfig
from services.evaluator.service import EvaluatorServer
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel, wait_for
from tests.otlp import Receiver

pytestmark = pytest.mark.integration

KEY = "trace-key"
CHIPS = ("ascend-910b2", "a100-80gb-sxm")
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP's SpanKind values


@pytest.fixture
def log_lines() -> Any:
    """The services' structured log, as JSON lines in memory, for the test's duration."""
    buffer = io.StringIO()
    configure_logging("test", "json", "debug", file=buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line]
    structlog.reset_defaults()


async def test_one_evaluation_is_one_trace_across_the_mesh(
    common, otlp_receiver: tuple[Receiver, int], closer, log_lines
):
    rec, port = otlp_receiver
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{port}"}
    common = dataclasses.replace(common, metrics_export_interval_ms=60_000)
    registry = RegistryServer(common, RegistryConfig(), env=env)
    await registry.start()
    closer.append(registry)
    agents = []
    for chip in CHIPS:
        agent = AgentServer(
            common,
            AgentConfig(chip=chip, devices=1, node_id=f"{chip}-0", registry_addr=registry.address),
            env=env,
        )
        await agent.start()
        closer.append(agent)
        agents.append(agent)
    scheduler = SchedulerServer(
        common,
        SchedulerConfig(registry_addr=registry.address, placement_interval_ms=100),
        env=env,
    )
    await scheduler.start()
    closer.append(scheduler)
    metering = MeteringServer(common, MeteringConfig(api_keys=f"{KEY}=acme"), env=env)
    await metering.start()
    closer.append(metering)
    evaluator = EvaluatorServer(
        common,
        EvaluatorConfig(
            registry_addr=registry.address,
            metering_addr=metering.address,
            scheduler_addr=scheduler.address,
        ),
        env=env,
    )
    await evaluator.start()
    closer.append(evaluator)
    gateway = GatewayServer(
        common,
        GatewayConfig(
            api_keys=f"{KEY}=acme",
            registry_addr=registry.address,
            evaluator_addr=evaluator.address,
            metering_addr=metering.address,
        ),
        env=env,
    )
    await gateway.start()
    closer.append(gateway)
    services = [registry, scheduler, *agents, metering, evaluator, gateway]

    async def registered() -> bool:
        async with service_channel(registry.address) as ch:
            nodes = await registry_pb2_grpc.RegistryServiceStub(ch).ListNodes(
                registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY)
            )
        return len(nodes.nodes) == len(CHIPS)

    await wait_for(registered, what="agents READY")

    md = (("authorization", f"Bearer {KEY}"),)
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(ch)
        started = (
            await stub.StartEvaluation(
                evaluator_pb2.StartEvaluationRequest(
                    scenario="llm-chat", model="Qwen2.5-7B", requests=40, qps=4.0, seed=3
                ),
                metadata=md,
            )
        ).evaluation
        last = None
        async for update in stub.WatchEvaluation(
            evaluator_pb2.WatchEvaluationRequest(evaluation_id=started.evaluation_id),
            metadata=md,
            timeout=120,
        ):
            last = update.evaluation
    assert last is not None and last.state == evaluator_pb2.EVALUATION_STATE_SUCCEEDED, last

    [root] = [
        s
        for s in await _flushed(rec, services, "gateway")
        if s["name"] == "pocgrid.v1.EvaluatorService/StartEvaluation"
    ]
    tid = root["trace_id"]

    def in_trace() -> list[dict[str, Any]]:
        return [s for s in rec.spans if s["trace_id"] == tid]

    async def metered() -> bool:
        # The agents' usage reaches metering after the evaluation ends (outbox, relay, batch).
        await _flush(services)
        return any(
            s["resource"]["service.name"] == "metering" and s["kind"] == CONSUMER
            for s in in_trace()
        )

    await wait_for(metered, within=30, what="metering's spans in the evaluation's trace")
    spans = in_trace()
    by_id = {s["span_id"]: s for s in spans}

    def service(s: dict[str, Any]) -> str:
        return str(s["resource"]["service.name"])

    def parent(s: dict[str, Any]) -> dict[str, Any]:
        return by_id[s["parent"]]

    assert {service(s) for s in spans} >= {"gateway", "evaluator", "scheduler", "agent", "metering"}
    # One tree: the gateway's span is the only root, and every other span's parent is in it.
    assert [s for s in spans if not s["parent"]] == [root]
    dangling = [(service(s), s["name"]) for s in spans if s["parent"] and s["parent"] not in by_id]
    assert not dangling, dangling

    # gRPC hops: gateway -> evaluator -> agents, each server span under its caller's span.
    [ev_start] = [s for s in spans if service(s) == "evaluator" and s["kind"] == SERVER]
    assert service(parent(ev_start)) == "gateway"
    # The run, which outlives StartEvaluation, has a span of its own under it.
    [run] = [s for s in spans if s["name"] == "evaluation"]
    assert run["parent"] == ev_start["span_id"]
    assert run["attributes"]["pocgrid.evaluation_id"] == started.evaluation_id
    # The evaluator places each run through the scheduler, inside the run's span.
    placed = [s for s in spans if service(s) == "scheduler" and s["kind"] == SERVER]
    assert {s["name"] for s in placed} >= {"pocgrid.v1.SchedulerService/SubmitJob"}, placed
    for s in placed:
        assert parent(s)["kind"] == CLIENT and service(parent(s)) == "evaluator", s["name"]
        assert parent(s)["parent"] == run["span_id"], s["name"]
    agent_servers = [s for s in spans if service(s) == "agent" and s["kind"] == SERVER]
    assert {s["resource"]["pocgrid.chip"] for s in agent_servers} == set(CHIPS)
    for s in agent_servers:
        assert parent(s)["kind"] == CLIENT and parent(s)["parent"] == run["span_id"], s["name"]
        # Agents' spans name their node and chip.
        assert s["resource"]["pocgrid.node_id"] == f"{s['resource']['pocgrid.chip']}-0"
    # NATS hop: metering processed the agents' usage events under the agents' publish spans.
    processed = [s for s in spans if service(s) == "metering" and s["kind"] == CONSUMER]
    assert processed
    for s in processed:
        assert s["name"] == "process usage.>"
        assert parent(s)["kind"] == PRODUCER and service(parent(s)) == "agent"
        # ... and linked to metering's batch span, which has a trace of its own.
        [(link_trace, link_span)] = s["links"]
        batch = next(b for b in rec.by_service("metering") if b["span_id"] == link_span)
        assert batch["trace_id"] == link_trace and batch["name"] == "consume usage.> batch"
    # Heartbeats are not traced by default.
    assert not [s for s in rec.spans if "Heartbeat" in s["name"]]

    # Logs carry the trace id: lines logged under the evaluation's spans, by several services.
    lines = log_lines()
    [begun] = [
        line
        for line in lines
        if line["event"] == "evaluation.started"
        and line.get("evaluation_id") == started.evaluation_id
    ]
    assert (begun["trace_id"], begun["span_id"]) == (tid, run["span_id"])
    logged = [line for line in lines if line.get("trace_id") == tid]
    span_ids = {line["span_id"] for line in logged}
    assert span_ids & {s["span_id"] for s in spans if service(s) == "evaluator"}, logged[:5]
    assert span_ids & {s["span_id"] for s in spans if service(s) == "agent"}, logged[:5]


async def _flush(services: list[Any]) -> None:
    for svc in services:
        # In a thread: the exporter's blocking call is answered by the receiver on this loop.
        await asyncio.to_thread(svc.tracer_provider.force_flush)


async def _flushed(rec: Receiver, services: list[Any], name: str) -> list[dict[str, Any]]:
    await _flush(services)
    await wait_for(lambda: bool(rec.by_service(name)), what=f"{name}'s spans")
    return rec.by_service(name)
