"""Jobs of the virtual pool: submission (idempotent per tenant and key), queries, cancellation
and completion. The placement loop (``placement.Placer``) moves them QUEUED -> RUNNING and on.

Every transition writes ``JobStateChanged`` (subject ``scheduler.job.<state>``, id
``job/<job_id>/<attempt>/<state>``) to the outbox in its own transaction; the relay publishes it
after the commit, so no RPC here waits on NATS.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from pocgrid.v1 import events_pb2, scheduler_pb2
from services.core.audit import audit_event
from services.core.errors import AlreadyExists, FailedPrecondition, NotFound
from services.core.logging import get_logger
from services.core.outbox import OutboxEvent, OutboxRelay
from services.scheduler.store import JobStore

log = get_logger()

QUEUED = scheduler_pb2.JOB_STATE_QUEUED
RUNNING = scheduler_pb2.JOB_STATE_RUNNING
CANCELLED = scheduler_pb2.JOB_STATE_CANCELLED
PREEMPTED = scheduler_pb2.JOB_STATE_PREEMPTED
#: States a job can still leave by cancellation (PREEMPTED waits to be queued again).
CANCELLABLE = (QUEUED, RUNNING, PREEMPTED)

SUCCEEDED = scheduler_pb2.JOB_STATE_SUCCEEDED
#: The audit log's name for this service.
SERVICE = "scheduler"
QUEUED_REASON = "waiting for the next placement round"


def state_slug(state: int) -> str:
    """``JOB_STATE_QUEUED`` -> ``queued``: the subject token and event-id part."""
    return (
        scheduler_pb2.JobState.Name(scheduler_pb2.JobState.ValueType(state))
        .removeprefix("JOB_STATE_")
        .lower()
    )


def job_event_id(job_id: str, attempt: int, state: int) -> str:
    """One logical event per job, attempt and state: a requeued job's second QUEUED is new."""
    return f"job/{job_id}/{attempt}/{state_slug(state)}"


def state_event(
    job_id: str, tenant: str, attempt: int, state: int, reason: str, at: datetime
) -> OutboxEvent:
    event = events_pb2.JobStateChanged(
        event_id=job_event_id(job_id, attempt, state),
        job_id=job_id,
        tenant=tenant,
        state=scheduler_pb2.JobState.Name(scheduler_pb2.JobState.ValueType(state)),
        reason=reason,
    )
    event.occurred_at.FromDatetime(at)
    return OutboxEvent(
        subject=f"scheduler.job.{state_slug(state)}",
        message=event,
        event_id=event.event_id,
        aggregate=f"job/{job_id}",
        at=at,
    )


#: Cancels a released job's tasks on its agents (the placement loop's ``stop_tasks``).
StopTasks = Callable[[str, Sequence[scheduler_pb2.Assignment], str], Coroutine[Any, Any, None]]


class JobBook:
    def __init__(
        self,
        store: JobStore,
        relay: OutboxRelay,
        *,
        wake: Callable[[], None] = lambda: None,
        stop_tasks: StopTasks | None = None,
    ) -> None:
        self._store = store
        self._relay = relay
        self._wake = wake
        self._stop_tasks = stop_tasks

    async def submit(
        self, tenant: str, spec: scheduler_pb2.JobSpec, idempotency_key: str
    ) -> scheduler_pb2.Job:
        if idempotency_key:
            existing = await self._store.find_by_key(tenant, idempotency_key)
            if existing is not None:
                return _replay(existing, spec, idempotency_key)
        now = datetime.now(UTC)
        job = scheduler_pb2.Job(
            job_id=f"job-{uuid.uuid4().hex[:20]}",
            tenant=tenant,
            spec=spec,
            state=QUEUED,
            state_reason=QUEUED_REASON,
            attempt=1,
            pending_reason="Submitted",
        )
        job.created_at.FromDatetime(now)
        job.updated_at.FromDatetime(now)
        entry = state_event(job.job_id, tenant, 1, QUEUED, QUEUED_REASON, now)
        if not await self._store.insert(job, idempotency_key, entry):
            # A concurrent retry with the same key committed first: answer with its job.
            existing = await self._store.find_by_key(tenant, idempotency_key)
            assert existing is not None
            return _replay(existing, spec, idempotency_key)
        log.info(
            "job.queued",
            job_id=job.job_id,
            tenant=tenant,
            model=spec.model,
            chip=spec.chip,
            devices=spec.devices,
        )
        self._relay.notify()
        self._wake()
        return job

    async def get(self, tenant: str, job_id: str) -> scheduler_pb2.Job:
        job = await self._store.get(tenant, job_id)
        if job is None:
            # Another tenant's job reads as absent: its existence is not ours to reveal.
            raise NotFound("job", job_id)
        return job

    async def query(
        self, tenant: str, state: int, offset: int, limit: int
    ) -> tuple[list[scheduler_pb2.Job], int]:
        return await self._store.query(tenant, state, offset, limit)

    async def cancel(self, tenant: str, job_id: str, reason: str) -> scheduler_pb2.Job:
        now = datetime.now(UTC)
        reason = reason or "cancelled by the caller"
        try:
            before = await self.get(tenant, job_id)
        except NotFound:
            # Another tenant's job reads as NOT_FOUND; the attempt is kept in the audit log.
            await self._refused_cancel(job_id, "NOT_FOUND", reason)
            raise
        audit = audit_event(
            SERVICE, "job.cancel", "job", job_id, resource_tenant=tenant, detail=reason, at=now
        )
        job = await self._store.transition(
            tenant,
            job_id,
            CANCELLABLE,
            CANCELLED,
            reason,
            now,
            lambda attempt: state_event(job_id, tenant, attempt, CANCELLED, reason, now),
            also=(audit,),
        )
        if job is None:
            current = await self.get(tenant, job_id)
            state = scheduler_pb2.JobState.Name(current.state)
            await self._refused_cancel(job_id, "FAILED_PRECONDITION", f"already {state}", tenant)
            raise FailedPrecondition(
                f"job '{job_id}' is already {state}: only queued, running or preempted jobs "
                "can be cancelled"
            )
        log.info("job.cancelled", job_id=job_id, tenant=tenant, reason=reason)
        self._relay.notify()
        self._wake()
        if before.assignments and self._stop_tasks is not None:
            # After the commit: the devices are free in the record whatever the agents answer.
            await self._stop_tasks(tenant, before.assignments, reason)
        return job

    async def _refused_cancel(
        self, job_id: str, result: str, detail: str, resource_tenant: str = ""
    ) -> None:
        await self._store.outbox.emit(
            audit_event(
                SERVICE,
                "job.cancel",
                "job",
                job_id,
                resource_tenant=resource_tenant,
                result=result,
                detail=detail,
            )
        )
        self._relay.notify()

    async def complete(self, tenant: str, job_id: str, reason: str) -> scheduler_pb2.Job:
        """A running evaluation or serving job ends (its caller drove the work): SUCCEEDED."""
        current = await self.get(tenant, job_id)
        if current.spec.kind not in (
            scheduler_pb2.JOB_KIND_EVALUATION,
            scheduler_pb2.JOB_KIND_SERVING,
        ):
            raise FailedPrecondition(
                f"job '{job_id}' is a batch job: it succeeds when its steps are done on the "
                "agents; CompleteJob ends evaluation and serving jobs"
            )
        now = datetime.now(UTC)
        reason = reason or "completed by the caller"
        job = await self._store.transition(
            tenant,
            job_id,
            (RUNNING,),
            SUCCEEDED,
            reason,
            now,
            lambda attempt: state_event(job_id, tenant, attempt, SUCCEEDED, reason, now),
        )
        if job is None:
            state = scheduler_pb2.JobState.Name(current.state)
            raise FailedPrecondition(
                f"job '{job_id}' is {state}: only a running job can be completed (wait until "
                "GetJob shows JOB_STATE_RUNNING)"
            )
        log.info("job.completed", job_id=job_id, tenant=tenant)
        self._relay.notify()
        self._wake()
        return job


def _replay(
    existing: scheduler_pb2.Job, spec: scheduler_pb2.JobSpec, key: str
) -> scheduler_pb2.Job:
    if existing.spec != spec:
        raise AlreadyExists(
            f"idempotency_key '{key}' already names job '{existing.job_id}' with a different "
            "spec: use a new key for a new job"
        )
    return existing
