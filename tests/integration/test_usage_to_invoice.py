"""Work done on an agent is on this month's invoice right after it is done: usage events carry
wall-clock times (the runtime's virtual clock starts at 0, which put every evaluation's usage
in January 1970: `pocgrid usage` listed it, `pocgrid invoice` showed 0 records)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pocgrid.samples import mlp
from pocgrid.tensors import from_array
from pocgrid.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from services.metering.config import MeteringConfig
from services.metering.invoicing import Month
from services.metering.service import MeteringServer
from services.metering.store import UsageFilter
from tests.conftest import service_channel, wait_for
from tests.integration.test_agent_tasks import TENANT, _agent

pytestmark = pytest.mark.integration


async def test_usage_of_work_just_done_is_on_this_months_invoice(common, closer) -> None:
    meter = MeteringServer(common, MeteringConfig(api_keys="key-a=acme"))
    await meter.start()
    closer.append(meter)
    agent = await _agent(common, closer, "mtt-s4000")
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    task = agent_pb2.RunTaskRequest(
        task_id="t-1",
        job_id="job-1",
        precision=common_pb2.PRECISION_FP16,
        onnx=agent_pb2.OnnxWork(model=mlp().SerializeToString(), inputs=[from_array("x", x)]),
    )
    before = datetime.now(UTC)
    async with service_channel(agent.address, identity="scheduler") as ch:
        done = await agent_pb2_grpc.AgentServiceStub(ch).RunTask(task, metadata=TENANT)
    assert meter.store is not None and meter.invoicer is not None
    store, invoicer = meter.store, meter.invoicer

    async def stored() -> bool:
        return await store.get(done.usage_id) is not None

    await wait_for(stored, within=20, what="metering to store the task's usage")
    record = await store.get(done.usage_id)
    assert record is not None
    ended = record.ended_at.ToDatetime(tzinfo=UTC)
    assert before <= ended <= datetime.now(UTC) + timedelta(seconds=1)
    invoice = await invoicer.invoice("acme", Month.of(ended))
    assert invoice is not None and invoice.records == 1
    assert [line.meter for line in invoice.lines if line.quantity] != []
    [today] = await store.groups(UsageFilter("acme"), ["window"], "day")
    assert today.window_start.ToDatetime(tzinfo=UTC) == ended.replace(
        hour=0, minute=0, second=0, microsecond=0
    )
