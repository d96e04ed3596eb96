"""Scheduler tables: jobs, their assignments (the one record of which device is held by which
job: see docs/scheduling.md) and the outbox of their state events. Only the scheduler uses them.

A change here needs a migration revision in ``services/scheduler/migrations/versions``
(see docs/migrations.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.core.outbox import outbox_table


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"
    # A retried submit finds its job by key; NULL keys (none given) never collide.
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_key"),)

    # Submission order: the queue order today and a stable paging order.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(63), unique=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model: Mapped[str] = mapped_column(String(128))
    chip: Mapped[str] = mapped_column(String(64), default="")
    devices: Mapped[int] = mapped_column(Integer)
    precision: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    display_name: Mapped[str] = mapped_column(String(256), default="")
    state: Mapped[int] = mapped_column(Integer, index=True)
    # Placements so far: 1 until a preempted or requeued job is placed again. Event ids carry
    # it, since the same state recurs once per attempt.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    state_reason: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The whole JobSpec as submitted (kind, shares, chips, gang, batch work, ...); the columns
    # above are what queries filter on. Rows from before revision 0004 have none.
    spec: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Batch steps finished in attempts that ended (checkpoints kept across preemption/requeue).
    steps_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # QUEUED: why it waits, a stable code (the words are in state_reason).
    pending_reason: Mapped[str] = mapped_column(String(64), default="", server_default="")


class AssignmentRow(Base):
    """One job's hold on devices of one node for one attempt, and the agent task running there.

    Active rows (``released_at`` NULL) are the reservations: a device's held share and memory
    are the sums over the active rows that list it. Released rows stay as the job's history.
    """

    __tablename__ = "assignments"

    task_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(63), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    replica: Mapped[int] = mapped_column(Integer, default=0)
    node_id: Mapped[str] = mapped_column(String(63), index=True)
    chip: Mapped[str] = mapped_column(String(64))
    agent_address: Mapped[str] = mapped_column(String(256))
    device_indexes: Mapped[list[int]] = mapped_column(JSON)
    device_share: Mapped[float] = mapped_column(Float)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    # Batch work given to the task, and its finished steps as last seen on the agent.
    steps: Mapped[int] = mapped_column(Integer, default=0)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    # 0: StartTask not answered yet; 1: the agent runs the task; 2: the agent confirmed it runs
    # no more (a released task left at 1 is cancelled when its agent answers again).
    started: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )


#: Job state events, written in the same transaction as the change (``services.core.outbox``).
OUTBOX = outbox_table(Base.metadata, "scheduler_outbox")
