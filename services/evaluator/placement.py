"""Where an evaluation's runs go: devices held through the scheduler, then served on the agent.

``SchedulerPool`` (the evaluator's pool whenever ``POCGRID_SCHEDULER_ADDR`` is set, as in every
mesh the project starts): for each (scenario component, chip type) run the evaluator submits a
``JOB_KIND_EVALUATION`` job to the scheduler for the chip type, the precision and the devices the
plan needs (one node: a tensor-parallel replica), waits until it is placed (it queues while the
pool is busy, like any job, under the scheduler's policy, quotas and tenant), serves the run on
the agent and devices of its assignment, and ends the job: ``CompleteJob`` when the run is done,
``CancelJob`` when it failed or the evaluator stops, so no device stays held by a run that is
over. The node list (which chip types the pool has, how many devices its largest node of each
has, for planning) still comes from the registry's READY nodes.

``RegistryPool`` is the pool of an evaluator without a scheduler (``POCGRID_SCHEDULER_ADDR``
empty): per chip type the READY node with the lowest node id whose devices are all healthy,
driven directly, with no reservation (results say ``placement: registry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import grpc

from pocgrid.precision import to_proto
from pocgrid.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.core.logging import get_logger
from services.evaluator.runner import Hold, Node, PlacementError

log = get_logger()

#: GetJob polls while a run waits to be placed: quick at first (a free pool places it within
#: one round), then at most this often.
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.25
ENDED = (
    scheduler_pb2.JOB_STATE_SUCCEEDED,
    scheduler_pb2.JOB_STATE_FAILED,
    scheduler_pb2.JOB_STATE_CANCELLED,
)

AgentChannel = Callable[[str], grpc.aio.Channel]


class _Agents:
    """One stub per agent address, on channels whose calls may last a whole serving run."""

    def __init__(self, channel: AgentChannel, timeout_s: float) -> None:
        self._channel = channel
        self._timeout = timeout_s
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}

    def _stub(self, address: str) -> agent_pb2_grpc.AgentServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = agent_pb2_grpc.AgentServiceStub(self._channel(address))
        return stub

    async def serve(
        self, node: Node, request: agent_pb2.ServeRequestsRequest
    ) -> agent_pb2.ServeRequestsResponse:
        response: agent_pb2.ServeRequestsResponse = await self._stub(node.address).ServeRequests(
            request, timeout=self._timeout
        )
        return response

    async def run_task(
        self, node: Node, request: agent_pb2.RunTaskRequest
    ) -> agent_pb2.RunTaskResponse:
        response: agent_pb2.RunTaskResponse = await self._stub(node.address).RunTask(
            request, timeout=self._timeout
        )
        return response

    async def join_communicator(
        self, node: Node, request: agent_pb2.JoinCommunicatorRequest
    ) -> agent_pb2.JoinCommunicatorResponse:
        response: agent_pb2.JoinCommunicatorResponse = await self._stub(
            node.address
        ).JoinCommunicator(request, timeout=self._timeout)
        return response


async def _ready_nodes(
    registry: registry_pb2_grpc.RegistryServiceStub,
) -> list[registry_pb2.Node]:
    out: list[registry_pb2.Node] = []
    token = ""
    while True:
        resp = await registry.ListNodes(
            registry_pb2.ListNodesRequest(
                state=registry_pb2.NODE_STATE_READY,
                page=common_pb2.PageRequest(page_size=1000, page_token=token),
            )
        )
        out.extend(resp.nodes)
        token = resp.page.next_page_token
        if not token:
            return out


class RegistryPool(_Agents):
    placement = "registry"

    def __init__(
        self,
        registry: registry_pb2_grpc.RegistryServiceStub,
        agent_channel: AgentChannel,
        serve_timeout_s: float,
    ) -> None:
        super().__init__(agent_channel, serve_timeout_s)
        self._registry = registry

    async def nodes(self) -> dict[str, Node]:
        found: dict[str, Node] = {}
        for n in await _ready_nodes(self._registry):
            healthy = all(d.health == common_pb2.DEVICE_HEALTH_HEALTHY for d in n.devices)
            if not healthy or not n.devices:
                continue
            best = found.get(n.chip)
            if best is None or n.node_id < best.node_id:
                found[n.chip] = Node(n.node_id, n.chip, n.agent_address, len(n.devices))
        return found

    @contextlib.asynccontextmanager
    async def hold(self, node: Node, hold: Hold) -> AsyncIterator[Node]:
        """No reservation: the first ``devices`` devices of the node found."""
        yield Node(node.node_id, node.chip, node.address, hold.devices, tuple(range(hold.devices)))


class SchedulerPool(_Agents):
    placement = "scheduler"

    def __init__(
        self,
        scheduler: scheduler_pb2_grpc.SchedulerServiceStub,
        registry: registry_pb2_grpc.RegistryServiceStub,
        agent_channel: AgentChannel,
        serve_timeout_s: float,
        placement_timeout_s: float,
    ) -> None:
        super().__init__(agent_channel, serve_timeout_s)
        self._scheduler = scheduler
        self._registry = registry
        self._placement_timeout = placement_timeout_s

    async def nodes(self) -> dict[str, Node]:
        """Per chip type, its largest READY node (healthy devices): what a plan may use on one
        node. The scheduler then places the run on any node with that many devices free."""
        found: dict[str, Node] = {}
        for n in await _ready_nodes(self._registry):
            healthy = sum(d.health != common_pb2.DEVICE_HEALTH_FAILED for d in n.devices)
            best = found.get(n.chip)
            if healthy and (best is None or healthy > best.devices):
                found[n.chip] = Node(n.node_id, n.chip, n.agent_address, healthy)
        return found

    @contextlib.asynccontextmanager
    async def hold(self, node: Node, hold: Hold) -> AsyncIterator[Node]:
        spec = scheduler_pb2.JobSpec(
            kind=scheduler_pb2.JOB_KIND_EVALUATION,
            model=hold.model,
            chip=node.chip,
            devices=hold.devices,
            precision=to_proto(hold.precision),
            display_name=hold.label[:256],
        )
        # The run id as idempotency key: a submit retried after a lost answer is the same job.
        job = (
            await self._scheduler.SubmitJob(
                scheduler_pb2.SubmitJobRequest(spec=spec, idempotency_key=hold.run_id)
            )
        ).job
        ok = False
        try:
            placed = await self._placed(job.job_id, hold)
            a = placed.assignments[0]
            yield Node(
                a.node_id,
                a.chip,
                a.agent_address,
                len(a.device_indexes),
                tuple(a.device_indexes),
                placed.job_id,
            )
            ok = True
        finally:
            # An evaluator that is stopping (this task cancelled) still gives the devices back
            # before the cancellation goes on.
            release = asyncio.ensure_future(self._release(job.job_id, ok))
            try:
                await asyncio.shield(release)
            except asyncio.CancelledError:
                await release
                raise

    async def _placed(self, job_id: str, hold: Hold) -> scheduler_pb2.Job:
        started = time.monotonic()
        delay = POLL_FIRST_S
        said = ""
        while True:
            got = await self._scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))
            job: scheduler_pb2.Job = got.job
            if job.state == scheduler_pb2.JOB_STATE_RUNNING and job.assignments:
                return job
            if job.state in ENDED:
                raise PlacementError(
                    f"scheduler job {job_id} ended "
                    f"{scheduler_pb2.JobState.Name(job.state)} before it was placed: "
                    f"{job.state_reason}"
                )
            waited = time.monotonic() - started
            why = f"{job.pending_reason}: {job.state_reason}" if job.pending_reason else ""
            if why and why != said and hold.waiting is not None:
                said = why
                await hold.waiting(f"queued in the scheduler ({why})")
            if waited > self._placement_timeout:
                raise PlacementError(
                    f"not placed by the scheduler within {self._placement_timeout:g} s "
                    f"(job {job_id}: {why or scheduler_pb2.JobState.Name(job.state)})"
                )
            await asyncio.sleep(delay)
            delay = min(POLL_MAX_S, delay * 2)

    async def _release(self, job_id: str, done: bool) -> None:
        """CompleteJob after a run that finished; CancelJob otherwise, and also when the job is
        no longer RUNNING (the scheduler requeued it because its node was lost: left queued it
        would be placed again and held for nobody)."""
        try:
            if done:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._scheduler.CompleteJob(
                        scheduler_pb2.CompleteJobRequest(
                            job_id=job_id, reason="evaluation run done"
                        )
                    )
                    return
            await self._scheduler.CancelJob(
                scheduler_pb2.CancelJobRequest(
                    job_id=job_id,
                    reason="evaluation run ended" if done else "evaluation run failed or stopped",
                )
            )
        except grpc.aio.AioRpcError as exc:
            # FAILED_PRECONDITION: it already ended, nothing is held. Anything else: the job
            # may still hold devices until cancelled by hand; say so.
            say = log.info if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else log.warning
            say(
                "evaluation.release_failed",
                job_id=job_id,
                code=exc.code().name,
                details=exc.details(),
            )
