"""Placement on the live mesh: a real registry, real agents (in-process and one SIGKILLed
process), a real nats-server and the scheduler's placement loop with the fifo policy.

What issue 9 asks the tests to show: gang jobs never start partially; a tenant over quota waits
while others run and borrows when others are idle; a preempted job resumes and finishes with its
earlier work kept; a SIGKILLed agent's task is requeued and completes elsewhere; a scheduler
restart keeps queue and reservations; an unknown chip or more devices than the pool can ever
have is refused at submit; tenant B can neither see nor cancel tenant A's jobs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import grpc
import nats
import pytest

from pocgrid.error_details import error_details
from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    events_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.agent.config import AgentConfig
from services.agent.service import AgentServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from services.scheduler.config import SchedulerConfig
from services.scheduler.service import SchedulerServer
from tests.conftest import service_channel, wait_for
from tests.integration.agent_processes import node_address
from tests.integration.test_agent_tasks import _usage_events

pytestmark = pytest.mark.integration

ACME = (("x-pocgrid-tenant", "acme"),)
GLOBEX = (("x-pocgrid-tenant", "globex"),)
CHIP = "ascend-910b2"
LEASE = RegistryConfig(
    lease_ttl_ms=3000,  # room for event-loop stalls of a loaded CI machine
    heartbeat_interval_ms=200,
    lease_check_interval_ms=50,
    heartbeat_flush_interval_ms=100,
)
QUEUED = scheduler_pb2.JOB_STATE_QUEUED
RUNNING = scheduler_pb2.JOB_STATE_RUNNING
SUCCEEDED = scheduler_pb2.JOB_STATE_SUCCEEDED
EVALUATION = scheduler_pb2.JOB_KIND_EVALUATION
BATCH = scheduler_pb2.JOB_KIND_BATCH


def _spec(**overrides: Any) -> scheduler_pb2.JobSpec:
    fields: dict[str, Any] = {
        "model": "Qwen2.5-7B",
        "chip": CHIP,
        "devices": 1,
        "precision": common_pb2.PRECISION_FP16,
        "priority": 10,
        "kind": BATCH,
        # About 0.2 virtual seconds per step on a 910B2 (paced 1:1 by the agents' speed).
        "batch": scheduler_pb2.BatchWork(steps=3, batch=1, input_len=16, output_len=16),
    }
    fields.update(overrides)
    return scheduler_pb2.JobSpec(**fields)


class Mesh:
    def __init__(self, common, closer) -> None:
        self.common = common
        self.closer = closer
        self.registry: RegistryServer | None = None
        self.scheduler: SchedulerServer | None = None
        self.channels: list[grpc.aio.Channel] = []

    async def start_registry(self) -> RegistryServer:
        self.registry = RegistryServer(self.common, LEASE)
        await self.registry.start()
        self.closer.append(self.registry)
        return self.registry

    async def agent(
        self, node_id: str, devices: int = 1, speed: float = 1.0, chip: str = CHIP
    ) -> AgentServer:
        assert self.registry is not None
        agent = AgentServer(
            self.common,
            AgentConfig(
                chip=chip,
                devices=devices,
                node_id=node_id,
                registry_addr=self.registry.address,
                speed_factor=speed,
            ),
        )
        await agent.start()
        self.closer.append(agent)
        await wait_for(lambda: self.ready(node_id), within=15, what=f"{node_id} READY")
        return agent

    async def ready(self, node_id: str) -> bool:
        assert self.registry is not None
        return bool(await node_address(self.registry.address, node_id))

    async def start_scheduler(self, **config: Any) -> scheduler_pb2_grpc.SchedulerServiceStub:
        assert self.registry is not None
        self.scheduler = SchedulerServer(
            self.common,
            SchedulerConfig(
                registry_addr=self.registry.address, placement_interval_ms=100, **config
            ),
        )
        await self.scheduler.start()
        self.closer.append(self.scheduler)
        ch = service_channel(self.scheduler.address)
        self.channels.append(ch)
        return scheduler_pb2_grpc.SchedulerServiceStub(ch)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


@pytest.fixture
async def mesh(common, closer):
    m = Mesh(common, closer)
    await m.start_registry()
    yield m
    await m.close()


async def _submit(stub, spec, md=ACME) -> scheduler_pb2.Job:
    return (await stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec), metadata=md)).job


async def _get(stub, job_id, md=ACME) -> scheduler_pb2.Job:
    return (await stub.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id), metadata=md)).job


async def _wait_state(stub, job_id, state, md=ACME, within=30.0) -> scheduler_pb2.Job:
    name = scheduler_pb2.JobState.Name(state)

    async def reached() -> bool:
        return (await _get(stub, job_id, md)).state == state

    await wait_for(reached, within=within, what=f"{job_id} {name}")
    return await _get(stub, job_id, md)


async def _job_events(url: str, job_id: str) -> list[str]:
    """Ids of the job's state events on the stream, in order."""
    return [event_id for event_id, _ in await _job_event_reasons(url, job_id)]


async def _job_event_reasons(url: str, job_id: str) -> list[tuple[str, str]]:
    """(id, reason) of the job's state events on the stream, in order."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.subscribe("scheduler.job.>", stream="POCGRID_SCHEDULER", ordered_consumer=True)
    ids: list[tuple[str, str]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=1)
            event = events_pb2.JobStateChanged.FromString(msg.data)
            if event.job_id == job_id:
                ids.append((event.event_id, event.reason))
    except (TimeoutError, nats.errors.TimeoutError):
        pass
    finally:
        await nc.close()
    return ids


async def _events_until(url: str, job_id: str, last: str) -> list[str]:
    """The job's event ids once ``last`` is among them (the relay publishes after commit)."""
    seen: list[str] = []

    async def arrived() -> bool:
        seen[:] = await _job_events(url, job_id)
        return last in seen

    await wait_for(arrived, within=20, what=f"event {last}")
    return seen


async def test_batch_job_is_placed_runs_its_steps_and_succeeds(mesh, nats_server):
    await mesh.agent("npu-a", devices=2, speed=0.0)
    stub = await mesh.start_scheduler()
    job = await _submit(stub, _spec(devices=2))
    done = await _wait_state(stub, job.job_id, SUCCEEDED)
    assert done.steps_done == 3 and done.attempt == 1 and not done.assignments
    assert "all 3 steps done" in done.state_reason
    usage = [u for u in await _usage_events(nats_server.url) if u.job_id == job.job_id]
    assert sum(u.tokens_out for u in usage) == 3 * 16
    ids = await _events_until(nats_server.url, job.job_id, f"job/{job.job_id}/1/succeeded")
    assert ids == [f"job/{job.job_id}/1/{s}" for s in ("queued", "running", "succeeded")]


async def test_gang_never_starts_partially(mesh):
    a = await mesh.agent("npu-a", devices=2)
    b = await mesh.agent("npu-b", devices=2)
    stub = await mesh.start_scheduler()
    holder = await _submit(stub, _spec(kind=EVALUATION))
    holder = await _wait_state(stub, holder.job_id, RUNNING)
    gang = await _submit(stub, _spec(devices=4, gang=True, batch=scheduler_pb2.BatchWork(steps=4)))
    # Three devices are free, over two nodes: a gang of four waits, and nothing of it starts.
    for _ in range(10):
        await asyncio.sleep(0.1)
        current = await _get(stub, gang.job_id)
        assert current.state == QUEUED and not current.assignments
    assert current.pending_reason == "InsufficientCapacity", current
    for agent in (a, b):
        async with service_channel(agent.address, identity="scheduler") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await agent_pb2_grpc.AgentServiceStub(ch).GetTask(
                    agent_pb2.GetTaskRequest(task_id=f"{gang.job_id}-a1-n0"), metadata=ACME
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.CompleteJob(scheduler_pb2.CompleteJobRequest(job_id=holder.job_id), metadata=ACME)
    running = await _wait_state(stub, gang.job_id, RUNNING)
    # All four devices at once, over both nodes, the steps split between a task per device.
    assert sorted((x.node_id, tuple(x.device_indexes)) for x in running.assignments) == [
        ("npu-a", (0,)),
        ("npu-a", (1,)),
        ("npu-b", (0,)),
        ("npu-b", (1,)),
    ]
    assert sum(x.steps for x in running.assignments) == 4
    done = await _wait_state(stub, gang.job_id, SUCCEEDED)
    assert done.steps_done == 4


async def test_over_quota_waits_while_others_run_and_borrows_when_idle(mesh):
    await mesh.agent("npu-a", devices=2)
    await mesh.agent("npu-b", devices=2)
    stub = await mesh.start_scheduler(scheduler_quotas="acme=2,globex=2")
    # globex is idle: acme borrows past its guarantee of 2.
    acme = [await _submit(stub, _spec(kind=EVALUATION)) for _ in range(3)]
    for job in acme:
        await _wait_state(stub, job.job_id, RUNNING)
    g1 = await _submit(stub, _spec(kind=EVALUATION), GLOBEX)
    g2 = await _submit(stub, _spec(kind=EVALUATION), GLOBEX)
    await _wait_state(stub, g1.job_id, RUNNING, GLOBEX)
    # Over its guarantee, acme may not take room globex is guaranteed and waiting for.
    a4 = await _submit(stub, _spec(kind=EVALUATION))

    async def reason(job_id, md, code) -> bool:
        return (await _get(stub, job_id, md)).pending_reason == code

    await wait_for(lambda: reason(a4.job_id, ACME, "QuotaExceeded"), within=10, what="quota")
    a4_now = await _get(stub, a4.job_id)
    assert "guarantee" in a4_now.state_reason
    # One of acme's devices frees: globex (within its guarantee) gets it, not acme.
    await stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=acme[0].job_id), metadata=ACME)
    await _wait_state(stub, g2.job_id, RUNNING, GLOBEX)
    await asyncio.sleep(0.5)
    assert (await _get(stub, a4.job_id)).state == QUEUED
    # globex has nothing waiting now: acme borrows again when room frees.
    await stub.CompleteJob(scheduler_pb2.CompleteJobRequest(job_id=g1.job_id), metadata=GLOBEX)
    await _wait_state(stub, a4.job_id, RUNNING)


async def test_preempted_job_resumes_and_finishes_with_its_work_kept(mesh, nats_server):
    await mesh.agent("npu-a", devices=1, speed=1.0)
    stub = await mesh.start_scheduler()
    low = await _submit(
        stub,
        _spec(
            priority=1,
            preemptible=True,
            batch=scheduler_pb2.BatchWork(steps=15, batch=1, input_len=16, output_len=16),
        ),
    )

    async def progressed() -> bool:
        job = await _get(stub, low.job_id)
        return job.state == RUNNING and job.steps_done >= 3

    await wait_for(progressed, within=30, what="low-priority job three steps in")
    high = await _submit(stub, _spec(priority=500, batch=scheduler_pb2.BatchWork(steps=2)))
    await _wait_state(stub, high.job_id, RUNNING)
    requeued = await _get(stub, low.job_id)
    assert requeued.state in (QUEUED, RUNNING) and requeued.attempt == 2
    kept = requeued.steps_done
    assert 3 <= kept < 15
    await _wait_state(stub, high.job_id, SUCCEEDED)
    done = await _wait_state(stub, low.job_id, SUCCEEDED, within=40)
    assert done.steps_done == 15 and done.attempt == 2
    ids = await _events_until(nats_server.url, low.job_id, f"job/{low.job_id}/2/succeeded")
    assert f"job/{low.job_id}/1/preempted" in ids
    assert ids[-1] == f"job/{low.job_id}/2/succeeded"
    # Every step done once and billed once: the preempted attempt's steps were kept.
    usage = [u for u in await _usage_events(nats_server.url) if u.job_id == low.job_id]
    assert sum(u.tokens_out for u in usage) == 15 * 16
    assert {u.event_id.split(":")[-1].split(".")[0] for u in usage} == {
        f"{low.job_id}-a1-n0",
        f"{low.job_id}-a2-n0",
    }


async def test_sigkilled_agents_task_is_requeued_and_completes_elsewhere(mesh, common, nats_server):
    assert mesh.registry is not None
    env = {
        **os.environ,
        "POCGRID_NATS_URL": nats_server.url,
        "POCGRID_LOG_FORMAT": "json",
        "POCGRID_DATA_DIR": str(common.data_dir),
        "POCGRID_SPEED_FACTOR": "1.0",
        "POCGRID_MESH_KEYS_DIR": common.mesh_keys_dir,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.agent",
        "--chip",
        CHIP,
        "--devices",
        "1",
        "--node-id",
        "npu-doomed",
        "--registry",
        mesh.registry.address,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: mesh.ready("npu-doomed"), within=60, what="agent process READY")
        stub = await mesh.start_scheduler()
        job = await _submit(
            stub,
            _spec(batch=scheduler_pb2.BatchWork(steps=12, batch=1, input_len=16, output_len=16)),
        )

        async def started() -> bool:
            j = await _get(stub, job.job_id)
            return j.state == RUNNING and j.steps_done >= 1

        await wait_for(started, within=30, what="job running on the doomed agent")
        assert (await _get(stub, job.job_id)).assignments[0].node_id == "npu-doomed"
        await mesh.agent("npu-spare", devices=1, speed=0.0)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        done = await _wait_state(stub, job.job_id, SUCCEEDED, within=40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert done.attempt == 2 and done.steps_done == 12
    reasons = dict(await _job_event_reasons(nats_server.url, job.job_id))
    # Requeued because the registry said the node was lost (its event, or the next round).
    assert "npu-doomed" in reasons[f"job/{job.job_id}/2/queued"]
    assert (
        "LOST" in reasons[f"job/{job.job_id}/2/queued"]
        or "lost" in reasons[f"job/{job.job_id}/2/queued"]
    )
    ids = await _events_until(nats_server.url, job.job_id, f"job/{job.job_id}/2/succeeded")
    assert ids[:2] == [f"job/{job.job_id}/1/queued", f"job/{job.job_id}/1/running"]
    assert ids[-3:] == [
        f"job/{job.job_id}/2/queued",
        f"job/{job.job_id}/2/running",
        f"job/{job.job_id}/2/succeeded",
    ]
    usage = [u for u in await _usage_events(nats_server.url) if u.job_id == job.job_id]
    # The spare did only what the lost agent had not reported done.
    assert {u.node_id for u in usage} <= {"npu-doomed", "npu-spare"}
    assert sum(u.tokens_out for u in usage if u.node_id == "npu-spare") >= 16


async def test_scheduler_restart_keeps_queue_and_reservations(mesh):
    await mesh.agent("npu-a", devices=1, speed=1.0)
    stub = await mesh.start_scheduler()
    first = await _submit(
        stub, _spec(batch=scheduler_pb2.BatchWork(steps=10, batch=1, input_len=16, output_len=16))
    )
    waiting = await _submit(stub, _spec(kind=EVALUATION))
    running = await _wait_state(stub, first.job_id, RUNNING)
    queued = await _get(stub, waiting.job_id)
    assert queued.state == QUEUED
    assert mesh.scheduler is not None
    await mesh.scheduler.stop()
    stub = await mesh.start_scheduler()
    after = await _get(stub, first.job_id)
    assert after.state == RUNNING and after.attempt == 1
    assert [(a.node_id, list(a.device_indexes), a.task_id) for a in after.assignments] == [
        (a.node_id, list(a.device_indexes), a.task_id) for a in running.assignments
    ]
    assert (await _get(stub, waiting.job_id)).state == QUEUED
    pool = (await stub.GetPool(scheduler_pb2.GetPoolRequest(), metadata=ACME)).devices
    assert [(d.node_id, [h.job_id for h in d.holdings]) for d in pool] == [
        ("npu-a", [first.job_id])
    ]
    done = await _wait_state(stub, first.job_id, SUCCEEDED, within=40)
    assert done.attempt == 1 and done.steps_done == 10
    await _wait_state(stub, waiting.job_id, RUNNING)


async def test_submit_refuses_unknown_chips_and_more_devices_than_the_pool_has(mesh):
    await mesh.agent("npu-a", devices=2, speed=0.0)
    stub = await mesh.start_scheduler()
    cases = [
        (_spec(chip="ascend-999"), grpc.StatusCode.INVALID_ARGUMENT, "spec.chip"),
        (
            _spec(chip="", allowed_chips=["nosuch-chip"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.allowed_chips[0]",
        ),
        (_spec(devices=4), grpc.StatusCode.FAILED_PRECONDITION, "spec.devices"),
        (_spec(devices=3), grpc.StatusCode.FAILED_PRECONDITION, "spec.chip"),
        (_spec(devices=8, gang=True), grpc.StatusCode.FAILED_PRECONDITION, "spec.devices"),
        (_spec(chip="mlu370-x8"), grpc.StatusCode.FAILED_PRECONDITION, "spec.chip"),
        (_spec(devices=2, device_share=0.5), grpc.StatusCode.INVALID_ARGUMENT, "spec.devices"),
    ]
    for spec, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _submit(stub, spec)
        assert err.value.code() == code, (spec, err.value.details())
        assert err.value.details().startswith(field), err.value.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert error_details(err.value).field_violations[0].field == field
    listed = await stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=ACME)
    assert not listed.jobs


async def test_fractional_jobs_share_a_device_and_the_pool_shows_who_holds_what(mesh):
    await mesh.agent("npu-a", devices=1, speed=0.0)
    stub = await mesh.start_scheduler()
    mine = await _submit(stub, _spec(kind=EVALUATION, device_share=0.5))
    theirs = await _submit(stub, _spec(kind=EVALUATION, device_share=0.25), GLOBEX)
    await _wait_state(stub, mine.job_id, RUNNING)
    await _wait_state(stub, theirs.job_id, RUNNING, GLOBEX)
    (device,) = (await stub.GetPool(scheduler_pb2.GetPoolRequest(), metadata=ACME)).devices
    assert device.share_held == pytest.approx(0.75)
    assert sorted((h.own, h.job_id) for h in device.holdings) == [
        (False, ""),
        (True, mine.job_id),
    ]
    assert device.memory_held_bytes == mine.spec.memory_bytes + theirs.spec.memory_bytes
    assert 0 < mine.spec.memory_bytes < device.memory_total_bytes


async def test_tenant_b_can_neither_see_nor_cancel_tenant_as_jobs(mesh):
    await mesh.agent("npu-a", devices=1, speed=0.0)
    stub = await mesh.start_scheduler()
    held = await _submit(stub, _spec(kind=EVALUATION))
    await _wait_state(stub, held.job_id, RUNNING)
    waiting = await _submit(stub, _spec(kind=EVALUATION))
    for call, request in (
        (stub.GetJob, scheduler_pb2.GetJobRequest(job_id=held.job_id)),
        (stub.CancelJob, scheduler_pb2.CancelJobRequest(job_id=held.job_id)),
        (stub.CompleteJob, scheduler_pb2.CompleteJobRequest(job_id=held.job_id)),
        (stub.CancelJob, scheduler_pb2.CancelJobRequest(job_id=waiting.job_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=GLOBEX)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=GLOBEX)).jobs
    queue = await stub.GetQueue(scheduler_pb2.GetQueueRequest(), metadata=GLOBEX)
    assert not queue.entries and queue.queued_total == 1
    mine = await stub.GetQueue(scheduler_pb2.GetQueueRequest(), metadata=ACME)
    assert [(e.job.job_id, e.position) for e in mine.entries] == [(waiting.job_id, 1)]
    (device,) = (await stub.GetPool(scheduler_pb2.GetPoolRequest(), metadata=GLOBEX)).devices
    assert [(h.own, h.job_id) for h in device.holdings] == [(False, "")]
    assert (await _get(stub, held.job_id)).state == RUNNING


async def test_a_node_that_comes_back_has_its_requeued_task_cancelled(mesh):
    first = await mesh.agent("npu-a", devices=1, speed=1.0)
    stub = await mesh.start_scheduler()
    job = await _submit(
        stub, _spec(batch=scheduler_pb2.BatchWork(steps=20, batch=1, input_len=16, output_len=16))
    )

    async def started() -> bool:
        j = await _get(stub, job.job_id)
        return j.state == RUNNING and j.steps_done >= 1

    await wait_for(started, within=30, what="job running on npu-a")
    task_id = (await _get(stub, job.job_id)).assignments[0].task_id
    # The agent stops: its task stays RUNNING in its database, to resume when it restarts.
    await first.stop()
    await mesh.agent("npu-b", devices=1, speed=0.0)
    done = await _wait_state(stub, job.job_id, SUCCEEDED, within=40)
    assert done.attempt == 2 and done.steps_done == 20
    # npu-a comes back and resumes the task; the scheduler, which moved the job, cancels it.
    back = await mesh.agent("npu-a", devices=1, speed=1.0)
    async with service_channel(back.address, identity="scheduler") as ch:
        agent = agent_pb2_grpc.AgentServiceStub(ch)

        async def cancelled() -> bool:
            task = (
                await agent.GetTask(agent_pb2.GetTaskRequest(task_id=task_id), metadata=ACME)
            ).task
            return task.state == agent_pb2.TASK_STATE_CANCELLED

        await wait_for(cancelled, within=20, what="the resumed task cancelled")
        task = (await agent.GetTask(agent_pb2.GetTaskRequest(task_id=task_id), metadata=ACME)).task
    assert "requeued elsewhere" in task.reason and task.steps_done < 20
