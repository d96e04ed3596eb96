"""Registry tables: nodes, their devices, the outbox of node events, and the key and tenant store
(tenants, API keys as digests, the audit log). Only the registry reads or writes them. A change
here needs a migration revision in ``services/registry/migrations/versions`` (see
docs/migrations.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String
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
    # The agent identity that registered the node id (services/core/mesh_identity.py): only it
    # may renew, re-register or deregister the node; "" while no agent holds it.
    owner: Mapped[str] = mapped_column(String(32), default="")
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


class TenantRow(Base):
    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    # Device thousandths, as the scheduler counts them (exact, unlike a float of devices).
    guaranteed_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    # None: no borrowing limit.
    borrow_limit_milli: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # 0: the gateway's default.
    rate_limit_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    burst: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(BigInteger, default=1)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Only the digest of the key is stored (see services/registry/keys.py for why SHA-256).
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(48))
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"), index=True)
    role: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(64), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_reason: Mapped[str] = mapped_column(String(512), default="")


class AuditRow(Base):
    __tablename__ = "audit_events"

    # Arrival order: the page token of ListAuditEvents.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Unique: a redelivered audit event is stored once.
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    service: Mapped[str] = mapped_column(String(64))
    actor_tenant: Mapped[str] = mapped_column(String(63), index=True, default="")
    actor_key_id: Mapped[str] = mapped_column(String(64), default="")
    actor_service: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(200), index=True)
    resource_tenant: Mapped[str] = mapped_column(String(63), default="")
    result: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(1024), default="")


#: Node and device events, written in the same transaction as the change they announce.
OUTBOX = outbox_table(Base.metadata, "registry_outbox")
