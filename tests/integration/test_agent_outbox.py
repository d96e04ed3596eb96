"""Agent usage goes through the outbox: finished work is answered at once with NATS away, and
its usage is published, once, when NATS is back."""

from __future__ import annotations

import time

import nats
import pytest
from nats.js.api import DeliverPolicy

from pocgrid.v1 import agent_pb2, agent_pb2_grpc, common_pb2, events_pb2
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel

pytestmark = pytest.mark.integration
TENANT = (("x-pocgrid-tenant", "acme"),)
#: Before the outbox, RunTask waited out the 5 s publish timeout with NATS down.
PROMPT_S = 2.0


async def test_run_task_with_nats_down_answers_at_once_and_bills_later(
    common, closer, nats_server, waiter
):
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    agent = AgentServer(
        common,
        AgentConfig(chip="mtt-s4000", devices=1, node_id="mtt-ob", registry_addr=reg.address),
    )
    await agent.start()
    closer.append(agent)
    tasks = [
        agent_pb2.RunTaskRequest(
            task_id=f"offline-{i}",
            job_id="job-ob",
            precision=common_pb2.PRECISION_BF16,
            llm_batch=agent_pb2.LlmBatchWork(
                model="Qwen2.5-7B", batch=1, input_len=16, output_len=4
            ),
        )
        for i in range(2)
    ]
    nats_server.stop()
    try:
        async with service_channel(agent.address, identity="scheduler") as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            answers = []
            for task in tasks:
                started = time.monotonic()
                answers.append(await stub.RunTask(task, metadata=TENANT))
                took = time.monotonic() - started
                assert took < PROMPT_S, f"RunTask took {took:.2f} s with NATS down"
            # A client retry is answered from the result cache, and its usage is not doubled.
            assert await stub.RunTask(tasks[0], metadata=TENANT) == answers[0]
    finally:
        nats_server.start()  # same port, same JetStream store

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        received: list[events_pb2.UsageRecorded] = []

        async def on_msg(msg):
            received.append(events_pb2.UsageRecorded.FromString(msg.data))

        await js.subscribe("usage.>", cb=on_msg, deliver_policy=DeliverPolicy.ALL)
        await waiter(lambda: len(received) >= 2, within=30, what="the usage of the outage")
        info = await js.stream_info("POCGRID_USAGE")
    finally:
        await nc.close()
    assert sorted(e.event_id for e in received) == sorted(a.usage_id for a in answers)
    assert info.state.messages == 2
    assert all(e.tenant == "acme" and e.tokens_out == 4 for e in received)
