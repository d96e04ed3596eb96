"""Task lifecycle on a real agent: StartTask / GetTask / CancelTask, steps as checkpoints,
state in the agent's database surviving an agent restart, usage once per finished step."""

from __future__ import annotations

import grpc
import pytest

from pocgrid.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for
from tests.integration.test_agent_tasks import _usage_events

pytestmark = pytest.mark.integration
ACME = (("x-pocgrid-tenant", "acme"),)
GLOBEX = (("x-pocgrid-tenant", "globex"),)


def _start(task_id: str, steps: int, **work) -> agent_pb2.StartTaskRequest:
    llm = {"model": "Qwen2.5-7B", "batch": 1, "input_len": 16, "output_len": 16, **work}
    return agent_pb2.StartTaskRequest(
        work=agent_pb2.RunTaskRequest(
            task_id=task_id,
            job_id="job-1",
            precision=common_pb2.PRECISION_FP16,
            device_indexes=[0],
            llm_batch=agent_pb2.LlmBatchWork(**llm),
        ),
        steps=steps,
    )


async def _registry(common, closer) -> RegistryServer:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    return reg


def _agent(common, reg: RegistryServer, speed: float) -> AgentServer:
    # About 0.2 virtual seconds per step on a 910B2; speed paces them in real time.
    return AgentServer(
        common,
        AgentConfig(
            chip="ascend-910b2",
            devices=2,
            node_id="npu-tasks",
            registry_addr=reg.address,
            speed_factor=speed,
        ),
    )


async def _task(stub, task_id: str, metadata=ACME) -> agent_pb2.Task:
    return (await stub.GetTask(agent_pb2.GetTaskRequest(task_id=task_id), metadata=metadata)).task


async def test_task_runs_its_steps_and_bills_each_once(common, closer, nats_server):
    reg = await _registry(common, closer)
    agent = _agent(common, reg, speed=0.0)
    await agent.start()
    closer.append(agent)
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        first = (await stub.StartTask(_start("t-done", 4), metadata=ACME)).task
        assert first.state == agent_pb2.TASK_STATE_RUNNING and first.steps == 4
        again = (await stub.StartTask(_start("t-done", 4), metadata=ACME)).task
        assert again.task_id == "t-done"

        async def finished() -> bool:
            return (await _task(stub, "t-done")).state == agent_pb2.TASK_STATE_SUCCEEDED

        await wait_for(finished, within=20, what="task succeeded")
        task = await _task(stub, "t-done")
        assert task.steps_done == 4
        assert task.last_step.task_id == "t-done.3" and task.last_step.tokens_out == 16
        assert task.busy_device_seconds == pytest.approx(4 * task.last_step.busy_device_seconds)
        # Another tenant does not see it.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _task(stub, "t-done", GLOBEX)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    usage = [e for e in await _usage_events(nats_server.url) if e.job_id == "job-1"]
    assert sorted(u.event_id.rsplit(":", 1)[1] for u in usage) == [f"t-done.{i}" for i in range(4)]


async def test_bad_work_is_refused_at_start(common, closer):
    reg = await _registry(common, closer)
    agent = _agent(common, reg, speed=0.0)
    await agent.start()
    closer.append(agent)
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        cases = [
            (_start("t-bad", 0), grpc.StatusCode.INVALID_ARGUMENT, "steps"),
            (_start("x" * 60, 1), grpc.StatusCode.INVALID_ARGUMENT, "work.task_id"),
            (_start("t-bad", 1, model="NoSuchModel"), grpc.StatusCode.NOT_FOUND, "model"),
            (_start("t-bad", 1, batch=0), grpc.StatusCode.INVALID_ARGUMENT, "llm_batch.batch"),
        ]
        for request, code, text in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.StartTask(request, metadata=ACME)
            assert err.value.code() == code, request
            assert text in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartTask(_start("t-ok", 1))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_cancel_keeps_the_steps_done_and_restart_resumes(common, closer, nats_server):
    reg = await _registry(common, closer)
    agent = _agent(common, reg, speed=1.0)
    await agent.start()
    async with service_channel(agent.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        await stub.StartTask(_start("t-cancel", 200), metadata=ACME)
        await stub.StartTask(_start("t-resume", 12), metadata=ACME)

        async def progressed() -> bool:
            return (await _task(stub, "t-cancel")).steps_done >= 2

        await wait_for(progressed, within=20, what="two steps done")
        cancelled = (
            await stub.CancelTask(
                agent_pb2.CancelTaskRequest(task_id="t-cancel", reason="preempted"),
                metadata=ACME,
            )
        ).task
        assert cancelled.state == agent_pb2.TASK_STATE_CANCELLED
        assert cancelled.reason == "preempted"
        assert 2 <= cancelled.steps_done < 200
        later = await _task(stub, "t-cancel")
        assert later.steps_done == cancelled.steps_done
        before_stop = (await _task(stub, "t-resume")).steps_done
    await agent.stop()
    assert before_stop < 12

    agent2 = _agent(common, reg, speed=1.0)
    await agent2.start()
    closer.append(agent2)
    async with service_channel(agent2.address, identity="scheduler") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)

        async def resumed() -> bool:
            return (await _task(stub, "t-resume")).state == agent_pb2.TASK_STATE_SUCCEEDED

        await wait_for(resumed, within=30, what="task resumed after restart and finished")
        assert (await _task(stub, "t-resume")).steps_done == 12
        # A cancelled task stays cancelled across the restart.
        assert (await _task(stub, "t-cancel")).state == agent_pb2.TASK_STATE_CANCELLED
    usage = await _usage_events(nats_server.url)
    steps = sorted(int(u.event_id.rsplit(".", 1)[1]) for u in usage if ":t-resume." in u.event_id)
    # Every step billed; a step interrupted by the stop is billed once, when it finished.
    assert steps == list(range(12))
