"""Evaluator tables: evaluations, tenants' own scenarios and sample sets; only the evaluator
uses them.

An evaluation is stored whole, as its ``pocgrid.v1.Evaluation`` message (request, progress,
results, recommendation), beside the columns it is looked up and listed by; every read is by
tenant, so one tenant never reads another's. A change here needs a migration revision in
``services/evaluator/migrations/versions`` (see docs/migrations.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.core.outbox import outbox_table


class Base(DeclarativeBase):
    pass


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    # A retried start finds its evaluation by key; NULL keys (none given) never collide.
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_evaluations_tenant_key"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    evaluation_id: Mapped[str] = mapped_column(String(63), unique=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScenarioRow(Base):
    __tablename__ = "user_scenarios"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_user_scenarios_tenant_name"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(63))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SampleSetRow(Base):
    """A tenant's labelled samples (``ImportSampleSet``), content-addressed per tenant."""

    __tablename__ = "sample_sets"
    __table_args__ = (UniqueConstraint("tenant", "sample_set_id", name="uq_sample_sets_tenant_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    sample_set_id: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(256))
    count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    """The ``ImportSampleSetRequest`` without its name."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


#: eval.* lifecycle events, published by the service's relay after the commit.
OUTBOX = outbox_table(Base.metadata, "evaluator_outbox")
