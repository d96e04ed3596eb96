"""Metering tables: one row per usage event. Only metering reads or writes them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UsageRow(Base):
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
