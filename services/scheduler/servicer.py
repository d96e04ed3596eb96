"""gRPC servicer: the public SchedulerService. Every call acts for the caller's tenant."""

from __future__ import annotations

import grpc

from pocgrid import precision
from pocgrid.catalog import Catalog, UnknownNameError
from pocgrid.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import InvalidArgument, Unauthenticated
from services.scheduler.jobs import JobBook

MAX_DEVICES = 64
MAX_PRIORITY = 1000


def caller_tenant() -> str:
    """The tenant the gateway authenticated; a call that bypassed the gateway has none."""
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated("no tenant: call through the gateway")
    return tenant


def _hint(exc: UnknownNameError) -> str:
    return f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, catalog: Catalog, jobs: JobBook) -> None:
        self._catalog = catalog
        self._jobs = jobs

    def _spec(self, request: scheduler_pb2.SubmitJobRequest) -> scheduler_pb2.JobSpec:
        """The validated spec with catalogue names in their canonical spelling."""
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "must be set")
        spec = request.spec
        v.require_text("spec.model", spec.model, 128)
        try:
            model = self._catalog.find_model(spec.model)
        except UnknownNameError as exc:
            raise InvalidArgument(
                "spec.model", f"unknown model '{spec.model}'{_hint(exc)}"
            ) from None
        chip = None
        if spec.chip:
            try:
                chip = self._catalog.find_chip(spec.chip)
            except UnknownNameError as exc:
                raise InvalidArgument(
                    "spec.chip", f"unknown chip '{spec.chip}'{_hint(exc)}"
                ) from None
        v.require_range("spec.devices", spec.devices, 1, MAX_DEVICES)
        if spec.precision == common_pb2.PRECISION_UNSPECIFIED:
            raise InvalidArgument("spec.precision", "must be set")
        name = precision.PRECISION_NAME.get(spec.precision)
        if name is None:
            raise InvalidArgument("spec.precision", "is not a Precision value")
        # What the chip's runtime runs, as the agent and the adapter see it (the catalogue).
        if chip is not None and name not in self._catalog.precisions(chip):
            known = ", ".join(self._catalog.precisions(chip)) or "none"
            raise InvalidArgument(
                "spec.precision", f"chip '{chip.name}' does not support {name} (it runs: {known})"
            )
        v.require_range("spec.priority", spec.priority, 0, MAX_PRIORITY)
        v.optional_text("spec.display_name", spec.display_name, 256)
        return scheduler_pb2.JobSpec(
            model=model.name,
            chip=chip.name if chip is not None else "",
            devices=spec.devices,
            precision=spec.precision,
            priority=spec.priority,
            display_name=spec.display_name,
        )

    async def SubmitJob(
        self, request: scheduler_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SubmitJobResponse:
        tenant = caller_tenant()
        spec = self._spec(request)
        v.optional_text("idempotency_key", request.idempotency_key, 128)
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
