"""Jobs of the virtual pool: submission (idempotent per tenant and key), queries, cancellation.

Placement on agents is not implemented yet: a submitted job enters QUEUED and stays there until
the placement loop (a later change) moves it to RUNNING. Nothing here pretends a job ran; the
only transitions today are QUEUED -> CANCELLED and, once placement exists, RUNNING -> CANCELLED.
Every transition publishes ``JobStateChanged`` on ``scheduler.job.<state>`` through the outbox.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pocgrid.v1 import events_pb2, scheduler_pb2
from services.core import telemetry
from services.core.errors import AlreadyExists, FailedPrecondition, NotFound
from services.core.logging import get_logger
from services.scheduler.outbox import EventOutbox
from services.scheduler.store import JobStore, OutboxEntry

log = get_logger()

QUEUED = scheduler_pb2.JOB_STATE_QUEUED
RUNNING = scheduler_pb2.JOB_STATE_RUNNING
CANCELLED = scheduler_pb2.JOB_STATE_CANCELLED
PREEMPTED = scheduler_pb2.JOB_STATE_PREEMPTED
#: States a job can still leave by cancellation (PREEMPTED waits to be queued again).
CANCELLABLE = (QUEUED, RUNNING, PREEMPTED)

QUEUED_REASON = "waiting for placement (placement on agents is not implemented yet)"


def state_slug(state: int) -> str:
    """``JOB_STATE_QUEUED`` -> ``queued``: the subject token and event-id part."""
    return (
        scheduler_pb2.JobState.Name(scheduler_pb2.JobState.ValueType(state))
        .removeprefix("JOB_STATE_")
        .lower()
    )


def state_event(job_id: str, tenant: str, state: int, reason: str, at: datetime) -> OutboxEntry:
    slug = state_slug(state)
    event = events_pb2.JobStateChanged(
        event_id=f"job:{job_id}:{slug}",
        job_id=job_id,
        tenant=tenant,
        state=scheduler_pb2.JobState.Name(scheduler_pb2.JobState.ValueType(state)),
        reason=reason,
    )
    event.occurred_at.FromDatetime(at)
    headers: dict[str, str] = {}
    telemetry.inject(headers)
    return OutboxEntry(event.event_id, f"scheduler.job.{slug}", event.SerializeToString(), headers)


class JobBook:
    def __init__(self, store: JobStore, outbox: EventOutbox) -> None:
        self._store = store
        self._outbox = outbox

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
        )
        job.created_at.FromDatetime(now)
        job.updated_at.FromDatetime(now)
        entry = state_event(job.job_id, tenant, QUEUED, QUEUED_REASON, now)
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
        await self._outbox.publish(entry)
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
        entry = state_event(job_id, tenant, CANCELLED, reason, now)
        job = await self._store.transition(
            tenant, job_id, CANCELLABLE, CANCELLED, reason, now, entry
        )
        if job is None:
            current = await self.get(tenant, job_id)
            state = scheduler_pb2.JobState.Name(current.state)
            raise FailedPrecondition(
                f"job '{job_id}' is already {state}: only queued, running or preempted jobs "
                "can be cancelled"
            )
        log.info("job.cancelled", job_id=job_id, tenant=tenant, reason=reason)
        await self._outbox.publish(entry)
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
