"""Metering tables: usage records (one row per usage event or correction), the tenants metering
knows, and final invoices. Only metering reads or writes them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: The partial index's condition, as a literal: a query must say it in these words (not with a
#: bound parameter) for SQLite and PostgreSQL to use the index.
IS_CORRECTION = "corrects <> ''"


class Base(DeclarativeBase):
    pass


class UsageRow(Base):
    __tablename__ = "usage_records"
    # Queries are always one tenant's records over a time window (by job or chip too: the
    # window narrows them enough, and an index per column cost ingest a B-tree insert per
    # event each); invoices read a tenant's records not yet on a final invoice; corrections
    # look up the corrections of the usage they correct, and only corrections are indexed for
    # that (every other row's "" would be an index entry per event for nothing).
    __table_args__ = (
        Index("ix_usage_tenant_ended", "tenant", "ended_at"),
        Index("ix_usage_tenant_invoice", "tenant", "invoice_id"),
        Index(
            "ix_usage_corrections",
            "corrects",
            sqlite_where=text(IS_CORRECTION),
            postgresql_where=text(IS_CORRECTION),
        ),
    )

    # The usage event's id: the primary key is what makes a redelivered event a no-op.
    usage_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(String(63), default="")
    chip: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(128), default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    busy_device_us: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_byte_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    devices: Mapped[int] = mapped_column(Integer, default=1)
    # A correction: the usage_id it compensates (its amounts are signed deltas), and why.
    corrects: Mapped[str] = mapped_column(String(160), default="")
    reason: Mapped[str] = mapped_column(String(256), default="")
    # Set when a final invoice takes the record, in the same transaction; NULL until then.
    invoice_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Usage counts in the window where it ended.
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TenantRow(Base):
    """A tenant metering accepts usage for: fed from the API-key configuration at start-up,
    never deleted (a tenant whose key was removed still has invoices and late usage)."""

    __tablename__ = "metering_tenants"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InvoiceRow(Base):
    """A final invoice: the Invoice message as it was finalized, never updated."""

    __tablename__ = "invoices"

    invoice_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    period: Mapped[str] = mapped_column(String(7))
    finalized_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    document: Mapped[bytes] = mapped_column(LargeBinary)


class PriceBookRow(Base):
    """Every price-book version metering has priced with, as it was (the PriceBook message):
    an invoice's version can always be looked up, and a version never changes."""

    __tablename__ = "price_books"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    effective_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    document: Mapped[bytes] = mapped_column(LargeBinary)
