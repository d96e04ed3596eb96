"""Scheduler tables: jobs and the outbox of their state events. Only the scheduler uses them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    state_reason: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxRow(Base):
    """A state event written in the same transaction as the state change (transactional
    outbox), so a change is never committed without its event, even if NATS is down."""

    __tablename__ = "job_events_outbox"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(160))
    subject: Mapped[str] = mapped_column(String(128))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # W3C trace context of the request that caused the change, so a late publish joins its trace.
    trace_headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
