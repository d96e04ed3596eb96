"""Registry tables: nodes, their devices, and the outbox of node events. Only the registry reads
or writes them. A change here needs a migration revision in
``services/registry/migrations/versions`` (see docs/migrations.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.core.outbox import outbox_table


class Base(DeclarativeBase):
    pass


class NodeRow(Base):
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


class DeviceRow(Base):
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


#: Node and device events, written in the same transaction as the change they announce.
OUTBOX = outbox_table(Base.metadata, "registry_outbox")
