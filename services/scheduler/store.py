"""Persistence of jobs (the scheduler's own database).

Every write that changes a job's state also writes its state event to the outbox in the same
transaction; the service's ``OutboxRelay`` publishes it after the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from pocgrid.v1 import common_pb2, scheduler_pb2
from services.core.outbox import Outbox, OutboxEvent
from services.core.storage import Database, db_operation, utc
from services.scheduler.tables import OUTBOX, JobRow


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = Outbox(db, OUTBOX)

    @db_operation
    async def find_by_key(self, tenant: str, key: str) -> scheduler_pb2.Job | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(JobRow).where(JobRow.tenant == tenant, JobRow.idempotency_key == key)
            )
            return None if row is None else _row_to_job(row)

    @db_operation
    async def insert(
        self, job: scheduler_pb2.Job, idempotency_key: str, event: OutboxEvent
    ) -> bool:
        """Store a new job and its first event; False when the tenant's key is already taken."""
        try:
            async with self._db.session() as session, session.begin():
                session.add(_job_to_row(job, idempotency_key or None))
                await session.flush()
                await self.outbox.add(session, event)
        except IntegrityError:
            if not idempotency_key:
                raise
            return False
        return True

    @db_operation
    async def get(self, tenant: str, job_id: str) -> scheduler_pb2.Job | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(JobRow).where(JobRow.tenant == tenant, JobRow.job_id == job_id)
            )
            return None if row is None else _row_to_job(row)

    @db_operation
    async def query(
        self, tenant: str, state: int, offset: int, limit: int
    ) -> tuple[list[scheduler_pb2.Job], int]:
        where = [JobRow.tenant == tenant]
        if state:
            where.append(JobRow.state == state)
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(JobRow).where(*where))
            rows = await session.scalars(
                select(JobRow).where(*where).order_by(JobRow.seq).offset(offset).limit(limit)
            )
            return [_row_to_job(r) for r in rows], int(total or 0)

    @db_operation
    async def transition(
        self,
        tenant: str,
        job_id: str,
        from_states: Sequence[int],
        to_state: int,
        reason: str,
        at: datetime,
        event: Callable[[int], OutboxEvent],
    ) -> scheduler_pb2.Job | None:
        """Move a job to ``to_state`` if it is in one of ``from_states``, with its event
        (``event(attempt)``: its id names the job's attempt, read in the same transaction).

        Returns the updated job, or None when the job is not in a state it may leave (the
        conditional UPDATE makes two concurrent transitions race safely: one wins).
        """
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                update(JobRow)
                .where(
                    JobRow.tenant == tenant,
                    JobRow.job_id == job_id,
                    JobRow.state.in_(list(from_states)),
                )
                .values(state=to_state, state_reason=reason, updated_at=at)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            job_row = await session.scalar(select(JobRow).where(JobRow.job_id == job_id))
            assert job_row is not None
            await self.outbox.add(session, event(job_row.attempt))
            return _row_to_job(job_row)


def _job_to_row(job: scheduler_pb2.Job, idempotency_key: str | None) -> JobRow:
    return JobRow(
        job_id=job.job_id,
        tenant=job.tenant,
        idempotency_key=idempotency_key,
        model=job.spec.model,
        chip=job.spec.chip,
        devices=job.spec.devices,
        precision=job.spec.precision,
        priority=job.spec.priority,
        display_name=job.spec.display_name,
        state=job.state,
        state_reason=job.state_reason,
        created_at=job.created_at.ToDatetime(tzinfo=UTC),
        updated_at=job.updated_at.ToDatetime(tzinfo=UTC),
    )


def _row_to_job(row: JobRow) -> scheduler_pb2.Job:
    job = scheduler_pb2.Job(
        job_id=row.job_id,
        tenant=row.tenant,
        spec=scheduler_pb2.JobSpec(
            model=row.model,
            chip=row.chip,
            devices=row.devices,
            precision=common_pb2.Precision.ValueType(row.precision),
            priority=row.priority,
            display_name=row.display_name,
        ),
        state=scheduler_pb2.JobState.ValueType(row.state),
        state_reason=row.state_reason,
    )
    job.created_at.FromDatetime(utc(row.created_at))
    job.updated_at.FromDatetime(utc(row.updated_at))
    return job
