"""gRPC servicer: the public SchedulerService. Every call acts for the caller's tenant: a tenant
sees, cancels and completes only its own jobs (another tenant's job reads as NOT_FOUND), and the
pool view shows another tenant's holdings without their job."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from pocgrid.catalog import Catalog
from pocgrid.sched import Pool, never_fits
from pocgrid.sched.policy import default_order
from pocgrid.v1 import common_pb2, registry_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from services.core.logging import get_logger
from services.scheduler.jobs import JobBook
from services.scheduler.spec import GIB, SpecChecker, demand
from services.scheduler.store import JobStore

log = get_logger()

#: Every node the registry knows (any state): what the pool can ever have. None: no registry.
Nodes = Callable[[], Awaitable[list[registry_pb2.Node]]]


def caller_tenant() -> str:
    """The tenant the gateway authenticated; a call that bypassed the gateway has none."""
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated("no tenant: call through the gateway")
    return tenant


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self, catalog: Catalog, jobs: JobBook, store: JobStore, nodes: Nodes | None
    ) -> None:
        self._checker = SpecChecker(catalog)
        self._jobs = jobs
        self._store = store
        self._nodes = nodes

    async def _check_pool(self, job: scheduler_pb2.Job) -> None:
        """Refuse at submit what the pool can never hold, rather than queue it forever."""
        if self._nodes is None:
            return
        try:
            nodes = await self._nodes()
        except grpc.aio.AioRpcError as exc:
            # Submitting does not depend on the registry being up: the job is accepted, and the
            # placement loop says why it waits (PoolTooSmallNow) if the pool cannot hold it.
            log.warning("submit.pool_unchecked", code=exc.code().name)
            return
        pool = Pool()
        for node in nodes:
            for d in node.devices:
                pool.add_device(node.node_id, d.index, node.chip, d.memory_total_bytes / GIB)
        reason = never_fits(demand(job), pool)
        if reason is None:
            return
        spec = job.spec
        field = "spec.devices" if spec.devices > 1 or spec.replicas > 1 else "spec.chip"
        if "GiB" in reason.message:
            field = "spec.memory_bytes"
        elif "no device of chip type" in reason.message:
            field = "spec.chip" if spec.chip else "spec.allowed_chips"
        raise FailedPrecondition(
            f"{field}: the pool can never hold this job: {reason.message}"
            + (
                " (without spec.gang all devices must be on one node)"
                if field == "spec.devices" and not spec.gang
                else ""
            ),
            reason="POOL_TOO_SMALL",
            metadata={"field": field},
        )

    async def SubmitJob(
        self, request: scheduler_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SubmitJobResponse:
        tenant = caller_tenant()
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "must be set")
        spec = self._checker.normalise(request.spec)
        v.optional_text("idempotency_key", request.idempotency_key, 128)
        probe = scheduler_pb2.Job(job_id="probe", tenant=tenant, spec=spec)
        probe.created_at.GetCurrentTime()
        await self._check_pool(probe)
        job = await self._jobs.submit(tenant, spec, request.idempotency_key)
        return scheduler_pb2.SubmitJobResponse(job=job)

    async def GetJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetJobResponse:
        tenant = caller_tenant()
        v.require_text("job_id", request.job_id, 63)
        return scheduler_pb2.GetJobResponse(job=await self._jobs.get(tenant, request.job_id))

    async def ListJobs(
        self, request: scheduler_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListJobsResponse:
        tenant = caller_tenant()
        if request.state not in scheduler_pb2.JobState.values():
            raise InvalidArgument("state", "is not a JobState value")
        size = v.page_size("page.page_size", request.page.page_size)
        offset = v.page_offset("page.page_token", request.page.page_token)
        jobs, total = await self._jobs.query(tenant, request.state, offset, size)
        next_token = str(offset + size) if offset + size < total else ""
        return scheduler_pb2.ListJobsResponse(
            jobs=jobs, page=common_pb2.PageResponse(next_page_token=next_token, total_size=total)
        )

    async def CancelJob(
        self, request: scheduler_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CancelJobResponse:
        tenant = caller_tenant()
        v.require_text("job_id", request.job_id, 63)
        v.optional_text("reason", request.reason, 512)
        return scheduler_pb2.CancelJobResponse(
            job=await self._jobs.cancel(tenant, request.job_id, request.reason)
        )

    async def CompleteJob(
        self, request: scheduler_pb2.CompleteJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CompleteJobResponse:
        tenant = caller_tenant()
        v.require_text("job_id", request.job_id, 63)
        v.optional_text("reason", request.reason, 512)
        return scheduler_pb2.CompleteJobResponse(
            job=await self._jobs.complete(tenant, request.job_id, request.reason)
        )

    async def GetQueue(
        self, request: scheduler_pb2.GetQueueRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetQueueResponse:
        tenant = caller_tenant()
        queued = await self._store.in_states([scheduler_pb2.JOB_STATE_QUEUED])
        jobs = {j.job_id: j for j in queued}
        ordered = [jobs[d.job_id] for d in default_order([demand(j) for j in queued])]
        return scheduler_pb2.GetQueueResponse(
            entries=[
                scheduler_pb2.QueueEntry(job=j, position=i + 1)
                for i, j in enumerate(ordered)
                if j.tenant == tenant
            ],
            queued_total=len(ordered),
        )

    async def GetPool(
        self, request: scheduler_pb2.GetPoolRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetPoolResponse:
        tenant = caller_tenant()
        try:
            nodes = await self._nodes() if self._nodes is not None else []
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"the registry (the pool's nodes) did not answer: {exc.code().name}; retry"
            ) from None
        held: dict[tuple[str, int], list[scheduler_pb2.DeviceHolding]] = {}
        owners = {
            j.job_id: j.tenant
            for j in await self._store.in_states([scheduler_pb2.JOB_STATE_RUNNING])
        }
        for job_id, a in await self._store.active_assignments():
            own = owners.get(job_id) == tenant
            for index in a.device_indexes:
                held.setdefault((a.node_id, index), []).append(
                    scheduler_pb2.DeviceHolding(
                        job_id=job_id if own else "",
                        device_share=a.device_share,
                        memory_bytes=a.memory_bytes,
                        own=own,
                    )
                )
        devices = []
        for node in sorted(nodes, key=lambda n: n.node_id):
            for d in node.devices:
                holdings = held.get((node.node_id, d.index), [])
                devices.append(
                    scheduler_pb2.DeviceAllocation(
                        node_id=node.node_id,
                        chip=node.chip,
                        device_index=d.index,
                        device_id=d.device_id,
                        memory_total_bytes=d.memory_total_bytes,
                        memory_held_bytes=sum(h.memory_bytes for h in holdings),
                        share_held=round(sum(h.device_share for h in holdings), 6),
                        holdings=holdings,
                        node_state=registry_pb2.NodeState.Name(node.state).removeprefix(
                            "NODE_STATE_"
                        ),
                        health=d.health,
                    )
                )
        return scheduler_pb2.GetPoolResponse(devices=devices)
