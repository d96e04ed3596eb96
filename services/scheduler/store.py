"""Persistence of jobs and their assignments (the scheduler's own database).

Every write that changes a job's state also writes its state event to the outbox in the same
transaction; the service's ``OutboxRelay`` publishes it after the commit. Assignments are the
reservations: which devices of which node a job holds for an attempt (``docs/scheduling.md``).
A placement, a requeue or an end writes the job's state and its assignments in one transaction,
so a scheduler killed at any point restarts with a queue and reservations that agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from pocgrid.v1 import common_pb2, scheduler_pb2
from services.core.outbox import Outbox, OutboxEvent
from services.core.storage import Database, db_operation, utc
from services.scheduler.tables import OUTBOX, AssignmentRow, JobRow

QUEUED = scheduler_pb2.JOB_STATE_QUEUED
RUNNING = scheduler_pb2.JOB_STATE_RUNNING
PREEMPTED = scheduler_pb2.JOB_STATE_PREEMPTED
TRANSITION_TRIES = 3  # a move that lost a race is tried again this often

#: ``assignments.started``: StartTask not answered yet; answered (the agent runs the task);
#: the agent confirmed it runs no more.
NOT_STARTED, STARTED, STOPPED = 0, 1, 2

#: ``event(attempt)``: the state event of a transition, its id naming the attempt.
EventFor = Callable[[int], OutboxEvent]


@dataclass(frozen=True, slots=True)
class NewAssignment:
    task_id: str
    replica: int
    node_id: str
    chip: str
    agent_address: str
    device_indexes: tuple[int, ...]
    device_share: float
    memory_bytes: int
    steps: int


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = Outbox(db, OUTBOX)

    # -- reads ----------------------------------------------------------------------------
    @db_operation
    async def find_by_key(self, tenant: str, key: str) -> scheduler_pb2.Job | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(JobRow).where(JobRow.tenant == tenant, JobRow.idempotency_key == key)
            )
            return None if row is None else await _with_assignments(session, row)

    @db_operation
    async def get(self, tenant: str, job_id: str) -> scheduler_pb2.Job | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(JobRow).where(JobRow.tenant == tenant, JobRow.job_id == job_id)
            )
            return None if row is None else await _with_assignments(session, row)

    @db_operation
    async def get_any(self, job_id: str) -> scheduler_pb2.Job | None:
        """A job of any tenant (the placement loop's view)."""
        async with self._db.session() as session:
            row = await session.scalar(select(JobRow).where(JobRow.job_id == job_id))
            return None if row is None else await _with_assignments(session, row)

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
            rows_list = list(rows)
            held = await _active_by_job(session, [r.job_id for r in rows_list])
            return [_row_to_job(r, held.get(r.job_id, [])) for r in rows_list], int(total or 0)

    @db_operation
    async def in_states(self, states: Sequence[int]) -> list[scheduler_pb2.Job]:
        """Every tenant's jobs in ``states``, in submission order, with active assignments."""
        async with self._db.session() as session:
            rows = list(
                await session.scalars(
                    select(JobRow).where(JobRow.state.in_(list(states))).order_by(JobRow.seq)
                )
            )
            held = await _active_by_job(session, [r.job_id for r in rows])
            return [_row_to_job(r, held.get(r.job_id, [])) for r in rows]

    @db_operation
    async def active_assignments(self) -> list[tuple[str, scheduler_pb2.Assignment]]:
        """(job id, assignment) of every reservation held now."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(AssignmentRow).where(AssignmentRow.released_at.is_(None))
            )
            return [(r.job_id, _assignment(r)) for r in rows]

    @db_operation
    async def jobs_on_node(self, node_id: str) -> list[str]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(AssignmentRow.job_id)
                .where(AssignmentRow.node_id == node_id, AssignmentRow.released_at.is_(None))
                .distinct()
            )
            return list(rows)

    # -- writes ---------------------------------------------------------------------------
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
    async def transition(
        self,
        tenant: str,
        job_id: str,
        from_states: Sequence[int],
        to_state: int,
        reason: str,
        at: datetime,
        event: EventFor,
        also: Sequence[OutboxEvent] = (),
    ) -> scheduler_pb2.Job | None:
        """Move a job to ``to_state`` if it is in one of ``from_states``, with its event
        (``event(attempt)``: its id names the job's attempt, read in the same transaction) and
        the events of ``also`` (an audit record).
        Leaving RUNNING releases the job's assignments and keeps the steps they finished.

        Returns the updated job, or None when the job is not in a state it may leave (the
        conditional UPDATE makes two concurrent transitions race safely: one wins). A move that
        lost the race to another one is tried again on the state that move left, so a job placed
        (QUEUED to RUNNING) while it was being cancelled is still cancelled.
        """
        for _ in range(TRANSITION_TRIES):
            async with self._db.session() as session, session.begin():
                row = await session.scalar(
                    select(JobRow).where(JobRow.tenant == tenant, JobRow.job_id == job_id)
                )
                if row is None or row.state not in from_states:
                    return None
                kept = await _release(session, job_id, at) if row.state == RUNNING else 0
                result = await session.execute(
                    update(JobRow)
                    .where(JobRow.job_id == job_id, JobRow.state == row.state)
                    .values(
                        state=to_state,
                        state_reason=reason,
                        updated_at=at,
                        pending_reason="",
                        steps_done=JobRow.steps_done + kept,
                    )
                )
                if getattr(result, "rowcount", 0) != 1:
                    await session.rollback()
                    continue
                await session.refresh(row)
                await self.outbox.add(session, event(row.attempt), *also)
                return _row_to_job(row, [])
        return None

    @db_operation
    async def place(
        self,
        job_id: str,
        attempt: int,
        assignments: Sequence[NewAssignment],
        reason: str,
        at: datetime,
        event: OutboxEvent,
    ) -> bool:
        """QUEUED -> RUNNING with its reservations, in one transaction; False when the job left
        QUEUED (cancelled meanwhile) or its attempt moved on."""
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                update(JobRow)
                .where(JobRow.job_id == job_id, JobRow.state == QUEUED, JobRow.attempt == attempt)
                .values(state=RUNNING, state_reason=reason, pending_reason="", updated_at=at)
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            row = await session.scalar(select(JobRow).where(JobRow.job_id == job_id))
            assert row is not None
            for a in assignments:
                session.add(_row(a, job_id, row.tenant, attempt, at))
            await self.outbox.add(session, event)
            return True

    @db_operation
    async def add_replicas(
        self, job_id: str, attempt: int, assignments: Sequence[NewAssignment], reason: str
    ) -> bool:
        """More replicas of a RUNNING serving job (this attempt) placed: their reservations
        written; False when the job left RUNNING or its attempt moved on."""
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            row = await session.scalar(
                select(JobRow).where(
                    JobRow.job_id == job_id, JobRow.state == RUNNING, JobRow.attempt == attempt
                )
            )
            if row is None:
                return False
            row.state_reason = reason[:512]
            row.updated_at = now
            for a in assignments:
                session.add(_row(a, job_id, row.tenant, attempt, now))
            return True

    @db_operation
    async def drop_replicas(self, job_id: str, task_ids: Sequence[str], reason: str) -> None:
        """Release some replicas of a RUNNING serving job (their node was lost): the job keeps
        running on the others, and the missing ones are placed again as room frees."""
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(AssignmentRow)
                .where(
                    AssignmentRow.job_id == job_id,
                    AssignmentRow.task_id.in_(list(task_ids)),
                    AssignmentRow.released_at.is_(None),
                )
                .values(released_at=now)
            )
            await session.execute(
                update(JobRow)
                .where(JobRow.job_id == job_id, JobRow.state == RUNNING)
                .values(state_reason=reason[:512], updated_at=now)
            )

    @db_operation
    async def requeue(
        self,
        job_id: str,
        attempt: int,
        reason: str,
        at: datetime,
        events: Callable[[str, int], list[OutboxEvent]],
    ) -> bool:
        """RUNNING (this attempt) -> QUEUED as attempt + 1: its reservations released, the steps
        they finished kept. ``events(tenant, new_attempt)`` are written with it (PREEMPTED of
        the old attempt where it was preempted, and QUEUED of the new one)."""
        async with self._db.session() as session, session.begin():
            row = await session.scalar(
                select(JobRow).where(
                    JobRow.job_id == job_id, JobRow.state == RUNNING, JobRow.attempt == attempt
                )
            )
            if row is None:
                return False
            kept = await _release(session, job_id, at)
            row.state = QUEUED
            row.state_reason = reason
            row.pending_reason = "Requeued"
            row.attempt = attempt + 1
            row.steps_done = row.steps_done + kept
            row.updated_at = at
            await self.outbox.add(session, *events(row.tenant, attempt + 1))
            return True

    @db_operation
    async def started(self, task_id: str) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(AssignmentRow)
                .where(AssignmentRow.task_id == task_id, AssignmentRow.started == NOT_STARTED)
                .values(started=STARTED)
            )

    @db_operation
    async def stopped(self, task_ids: Sequence[str]) -> None:
        """The agents confirmed these tasks run no more (ended, cancelled or unknown there)."""
        if not task_ids:
            return
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(AssignmentRow)
                .where(AssignmentRow.task_id.in_(list(task_ids)))
                .values(started=STOPPED)
            )

    @db_operation
    async def orphans(self) -> list[tuple[str, scheduler_pb2.Assignment]]:
        """(tenant, assignment) of released tasks an agent may still be running: not confirmed
        stopped (their node was lost, or did not answer the start or the cancel)."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(AssignmentRow).where(
                    AssignmentRow.released_at.is_not(None),
                    AssignmentRow.started != STOPPED,
                    AssignmentRow.steps > 0,
                )
            )
            return [(r.tenant, _assignment(r)) for r in rows]

    @db_operation
    async def progress(self, task_id: str, steps_done: int) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(AssignmentRow)
                .where(AssignmentRow.task_id == task_id, AssignmentRow.released_at.is_(None))
                .values(steps_done=steps_done)
            )

    @db_operation
    async def set_pending(self, reasons: dict[str, tuple[str, str]]) -> None:
        """QUEUED jobs' pending reasons (code, words); not a state change, so no event."""
        if not reasons:
            return
        async with self._db.session() as session, session.begin():
            for job_id, (code, words) in reasons.items():
                await session.execute(
                    update(JobRow)
                    .where(
                        JobRow.job_id == job_id,
                        JobRow.state == QUEUED,
                        (JobRow.pending_reason != code) | (JobRow.state_reason != words),
                    )
                    .values(pending_reason=code, state_reason=words[:512])
                )


def _row(a: NewAssignment, job_id: str, tenant: str, attempt: int, at: datetime) -> AssignmentRow:
    return AssignmentRow(
        task_id=a.task_id,
        job_id=job_id,
        tenant=tenant,
        attempt=attempt,
        replica=a.replica,
        node_id=a.node_id,
        chip=a.chip,
        agent_address=a.agent_address,
        device_indexes=list(a.device_indexes),
        device_share=a.device_share,
        memory_bytes=a.memory_bytes,
        steps=a.steps,
        steps_done=0,
        started=0,
        created_at=at,
        released_at=None,
    )


async def _release(session: AsyncSession, job_id: str, at: datetime) -> int:
    """Release a job's active assignments; the steps they finished (to keep)."""
    done = await session.scalar(
        select(func.coalesce(func.sum(AssignmentRow.steps_done), 0)).where(
            AssignmentRow.job_id == job_id, AssignmentRow.released_at.is_(None)
        )
    )
    await session.execute(
        update(AssignmentRow)
        .where(AssignmentRow.job_id == job_id, AssignmentRow.released_at.is_(None))
        .values(released_at=at)
    )
    return int(done or 0)


async def _active_by_job(
    session: AsyncSession, job_ids: Sequence[str]
) -> dict[str, list[AssignmentRow]]:
    if not job_ids:
        return {}
    rows = await session.scalars(
        select(AssignmentRow)
        .where(AssignmentRow.job_id.in_(list(job_ids)), AssignmentRow.released_at.is_(None))
        .order_by(AssignmentRow.replica, AssignmentRow.task_id)
    )
    out: dict[str, list[AssignmentRow]] = {}
    for r in rows:
        out.setdefault(r.job_id, []).append(r)
    return out


async def _with_assignments(session: AsyncSession, row: JobRow) -> scheduler_pb2.Job:
    held = await _active_by_job(session, [row.job_id])
    return _row_to_job(row, held.get(row.job_id, []))


def _assignment(r: AssignmentRow) -> scheduler_pb2.Assignment:
    return scheduler_pb2.Assignment(
        node_id=r.node_id,
        chip=r.chip,
        agent_address=r.agent_address,
        device_indexes=list(r.device_indexes),
        device_share=r.device_share,
        memory_bytes=r.memory_bytes,
        task_id=r.task_id,
        replica=r.replica,
        steps=r.steps,
        steps_done=r.steps_done,
    )


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
        pending_reason=job.pending_reason,
        created_at=job.created_at.ToDatetime(tzinfo=UTC),
        updated_at=job.updated_at.ToDatetime(tzinfo=UTC),
        spec=job.spec.SerializeToString(),
        steps_done=0,
    )


def _row_to_job(row: JobRow, held: Sequence[AssignmentRow]) -> scheduler_pb2.Job:
    if row.spec:
        spec = scheduler_pb2.JobSpec.FromString(row.spec)
    else:
        spec = scheduler_pb2.JobSpec(
            model=row.model,
            chip=row.chip,
            devices=row.devices,
            precision=common_pb2.Precision.ValueType(row.precision),
            priority=row.priority,
            display_name=row.display_name,
        )
    assignments = [_assignment(a) for a in held]
    job = scheduler_pb2.Job(
        job_id=row.job_id,
        tenant=row.tenant,
        spec=spec,
        state=scheduler_pb2.JobState.ValueType(row.state),
        state_reason=row.state_reason,
        attempt=row.attempt,
        assignments=assignments,
        steps_done=row.steps_done + sum(a.steps_done for a in assignments),
        pending_reason=row.pending_reason,
    )
    job.created_at.FromDatetime(utc(row.created_at))
    job.updated_at.FromDatetime(utc(row.updated_at))
    return job
