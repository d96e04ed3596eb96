"""Adapter tables: tenants' imported models and stored plans. Only the adapter uses them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ImportedModelRow(Base):
    __tablename__ = "adapter_imported_models"

    # Content-addressed per tenant: the same bytes imported twice are one row; two tenants
    # importing the same bytes each own a row.
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    opset: Mapped[int] = mapped_column(Integer, default=0)
    operators: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    params_b: Mapped[float] = mapped_column(Float, default=0.0)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PlanRow(Base):
    __tablename__ = "adapter_plans"

    # sha256 of (model hash, chip, options): a plan depends on nothing else.
    cache_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_hash: Mapped[str] = mapped_column(String(64), index=True)
    chip: Mapped[str] = mapped_column(String(64))
    options: Mapped[str] = mapped_column(String(1024))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
