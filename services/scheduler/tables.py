"""Scheduler tables: jobs and the outbox of their state events. Only the scheduler uses them.

A change here needs a migration revision in ``services/scheduler/migrations/versions``
(see docs/migrations.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, UniqueConstraint
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


#: Job state events, written in the same transaction as the change (``services.core.outbox``).
OUTBOX = outbox_table(Base.metadata, "scheduler_outbox")
