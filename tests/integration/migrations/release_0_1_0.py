"""The tables of release 0.1.0, frozen: what its ``create_all`` made (un-versioned databases).

Copied from services/{scheduler,registry,metering}/tables.py at release 0.1.0 (commit ba1fb74)
and never edited since, so the migration tests start from what a real old database holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


# -- scheduler ---------------------------------------------------------------------------------
class SchedulerBase(DeclarativeBase):
    pass


class JobRow(SchedulerBase):
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


class OutboxRow(SchedulerBase):
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


# -- registry ----------------------------------------------------------------------------------
class RegistryBase(DeclarativeBase):
    pass


class NodeRow(RegistryBase):
    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    chip: Mapped[str] = mapped_column(String(64), index=True)
    vendor_family: Mapped[str] = mapped_column(String(32), index=True)
    agent_address: Mapped[str] = mapped_column(String(256))
    state: Mapped[int] = mapped_column(Integer, index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runtime_name: Mapped[str] = mapped_column(String(128), default="")
    runtime_version: Mapped[str] = mapped_column(String(128), default="")
    collective_library: Mapped[str] = mapped_column(String(128), default="")
    hostname: Mapped[str] = mapped_column(String(256), default="")
    # Bumped on every registration: names one lease incarnation (event ids derive from it).
    generation: Mapped[int] = mapped_column(Integer, default=1)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    devices: Mapped[list[DeviceRow]] = relationship(
        back_populates="node",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="DeviceRow.index",
    )


class DeviceRow(RegistryBase):
    __tablename__ = "devices"

    node_id: Mapped[str] = mapped_column(
        ForeignKey("nodes.node_id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    uuid: Mapped[str] = mapped_column(String(128))
    chip: Mapped[str] = mapped_column(String(64))
    memory_total_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    compute_units: Mapped[int] = mapped_column(Integer, default=0)
    precisions: Mapped[list[int]] = mapped_column(JSON, default=list)
    health: Mapped[int] = mapped_column(Integer)
    health_reason: Mapped[str] = mapped_column(String(512), default="")
    node: Mapped[NodeRow] = relationship(back_populates="devices")


# -- metering ----------------------------------------------------------------------------------
class MeteringBase(DeclarativeBase):
    pass


class UsageRow(MeteringBase):
    __tablename__ = "usage_records"
    # Queries are always one tenant's records over a time window.
    __table_args__ = (Index("ix_usage_tenant_ended", "tenant", "ended_at"),)

    # The usage event's id: the primary key is what makes a redelivered event a no-op.
    usage_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(String(63), default="")
    chip: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(String(128), default="", index=True)
    model: Mapped[str] = mapped_column(String(128), default="")
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    busy_device_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    memory_gib_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Usage counts in the window where it ended.
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
