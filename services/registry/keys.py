"""The key and tenant store: tenants with their quotas, API keys kept only as digests, and the
audit log, in the registry's own database.

Keys are ``pgk_<key_id>_<secret>``: the key id (shown in listings and the audit log) and 256
random bits. Only the SHA-256 of the whole key is stored. A plain, fast hash is the right one
here: slow password hashes (bcrypt, scrypt, argon2) exist to make guessing a *low-entropy*
secret expensive, and nothing can guess 256 random bits however fast each guess is; a salt
defends against precomputed tables, which no one can build for random keys either. A fast
hash also keeps the lookup an index probe on the digest, cheap on every gateway cache miss.

Every change other services must hear about (a tenant created or updated, a key revoked) is
written with its event in one transaction (the registry's outbox), and with its audit record.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from pocgrid.v1 import admin_pb2, events_pb2
from services.core.apikeys import digest
from services.core.audit import audit_record
from services.core.errors import AlreadyExists, NotFound
from services.core.outbox import Outbox, OutboxEvent
from services.core.storage import Database, db_operation, utc
from services.registry.tables import ApiKeyRow, AuditRow, TenantRow

KEY_PREFIX = "pgk_"
SERVICE = "registry"
_AUDIT_COLUMNS = (
    "event_id",
    "service",
    "actor_tenant",
    "actor_key_id",
    "actor_service",
    "action",
    "resource_type",
    "resource_id",
    "resource_tenant",
    "result",
    "detail",
)


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, key)``: 48 bits of id (unique in the table), 256 bits of secret."""
    key_id = "k" + secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True, slots=True)
class TenantChanges:
    """What an UpdateTenant sets; None leaves a field as it is."""

    guaranteed_milli: int | None = None
    borrow_limit_milli: int | None = None
    clear_borrow_limit: bool = False
    rate_limit_per_s: float | None = None
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor_tenant: str = ""
    action: str = ""
    resource_type: str = ""
    resource_id: str = ""
    limit: int = 100
    before_seq: int = 0
    """0: from the newest."""


def tenant_to_proto(row: TenantRow) -> admin_pb2.Tenant:
    msg = admin_pb2.Tenant(
        name=row.name,
        guaranteed_devices=row.guaranteed_milli / 1000,
        rate_limit_per_s=row.rate_limit_per_s,
        burst=row.burst,
        revision=row.revision,
    )
    if row.borrow_limit_milli is not None:
        msg.borrow_limit_devices = row.borrow_limit_milli / 1000
    msg.created_at.FromDatetime(utc(row.created_at))
    msg.updated_at.FromDatetime(utc(row.updated_at))
    return msg


def key_to_proto(row: ApiKeyRow) -> admin_pb2.ApiKey:
    msg = admin_pb2.ApiKey(
        key_id=row.key_id,
        prefix=row.prefix,
        tenant=row.tenant,
        role=admin_pb2.KeyRole.ValueType(row.role),
        description=row.description,
        revoked_reason=row.revoked_reason,
        created_by=row.created_by,
    )
    msg.created_at.FromDatetime(utc(row.created_at))
    if row.revoked_at is not None:
        msg.revoked_at.FromDatetime(utc(row.revoked_at))
    return msg


def audit_to_proto(row: AuditRow) -> admin_pb2.AuditEvent:
    msg = admin_pb2.AuditEvent(**{c: getattr(row, c) for c in _AUDIT_COLUMNS})
    msg.occurred_at.FromDatetime(utc(row.occurred_at))
    return msg


def _audit_values(record: admin_pb2.AuditEvent) -> dict[str, Any]:
    values: dict[str, Any] = {c: getattr(record, c) for c in _AUDIT_COLUMNS}
    values["occurred_at"] = record.occurred_at.ToDatetime(tzinfo=UTC)
    return values


async def insert_audit(session: AsyncSession, record: admin_pb2.AuditEvent) -> None:
    """The registry's own audit record, in the transaction of the change it records."""
    await session.execute(insert(AuditRow).values(**_audit_values(record)))


def _tenant_event(subject: str, tenant: admin_pb2.Tenant, at: datetime) -> OutboxEvent:
    event = events_pb2.TenantChanged(
        event_id=f"tenant/{tenant.name}/{tenant.revision}", tenant=tenant
    )
    event.occurred_at.FromDatetime(at)
    return OutboxEvent(subject, event, event.event_id, f"tenant/{tenant.name}", at)


class KeyStore:
    def __init__(self, db: Database, outbox: Outbox) -> None:
        self._db = db
        self._outbox = outbox
        postgres = db.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert

    async def _audit(self, session: AsyncSession, record: admin_pb2.AuditEvent) -> None:
        await insert_audit(session, record)

    # -- tenants --------------------------------------------------------------------------
    @db_operation
    async def create_tenant(
        self,
        name: str,
        guaranteed_milli: int,
        borrow_limit_milli: int | None,
        rate_limit_per_s: float,
        burst: int,
    ) -> admin_pb2.Tenant:
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            if await session.get(TenantRow, name) is not None:
                raise AlreadyExists(f"tenant '{name}' already exists", reason="TENANT_EXISTS")
            row = TenantRow(
                name=name,
                guaranteed_milli=guaranteed_milli,
                borrow_limit_milli=borrow_limit_milli,
                rate_limit_per_s=rate_limit_per_s,
                burst=burst,
                created_at=now,
                updated_at=now,
                revision=1,
            )
            session.add(row)
            await session.flush()
            tenant = tenant_to_proto(row)
            await self._outbox.add(session, _tenant_event("registry.tenant.created", tenant, now))
            await self._audit(
                session,
                audit_record(
                    SERVICE, "tenant.create", "tenant", name, resource_tenant=name, at=now
                ),
            )
        return tenant

    @db_operation
    async def get_tenant(self, name: str) -> admin_pb2.Tenant:
        async with self._db.session() as session:
            row = await session.get(TenantRow, name)
            if row is None:
                raise NotFound("tenant", name)
            return tenant_to_proto(row)

    @db_operation
    async def list_tenants(self) -> list[admin_pb2.Tenant]:
        async with self._db.session() as session:
            rows = await session.scalars(select(TenantRow).order_by(TenantRow.name))
            return [tenant_to_proto(r) for r in rows]

    @db_operation
    async def update_tenant(self, name: str, changes: TenantChanges) -> admin_pb2.Tenant:
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            row = await session.get(TenantRow, name, with_for_update=True)
            if row is None:
                raise NotFound("tenant", name)
            said: list[str] = []
            if changes.guaranteed_milli is not None:
                row.guaranteed_milli = changes.guaranteed_milli
                said.append(f"guaranteed={changes.guaranteed_milli / 1000:g}")
            if changes.clear_borrow_limit:
                row.borrow_limit_milli = None
                said.append("borrow_limit=none")
            elif changes.borrow_limit_milli is not None:
                row.borrow_limit_milli = changes.borrow_limit_milli
                said.append(f"borrow_limit={changes.borrow_limit_milli / 1000:g}")
            if changes.rate_limit_per_s is not None:
                row.rate_limit_per_s = changes.rate_limit_per_s
                said.append(f"rate_limit_per_s={changes.rate_limit_per_s:g}")
            if changes.burst is not None:
                row.burst = changes.burst
                said.append(f"burst={changes.burst}")
            row.revision += 1
            row.updated_at = now
            await session.flush()
            tenant = tenant_to_proto(row)
            await self._outbox.add(session, _tenant_event("registry.tenant.updated", tenant, now))
            await self._audit(
                session,
                audit_record(
                    SERVICE,
                    "tenant.update",
                    "tenant",
                    name,
                    resource_tenant=name,
                    detail=", ".join(said) or "no change",
                    at=now,
                ),
            )
        return tenant

    # -- keys -----------------------------------------------------------------------------
    @db_operation
    async def create_key(
        self, tenant: str, role: int, description: str, created_by: str
    ) -> tuple[admin_pb2.ApiKey, str]:
        """The new key's record and the key itself (never stored, never shown again)."""
        now = datetime.now(UTC)
        key_id, key = new_key()
        async with self._db.session() as session, session.begin():
            if await session.get(TenantRow, tenant) is None:
                raise NotFound(
                    "tenant", tenant, "create it first: pocgrid admin tenants create NAME"
                )
            row = ApiKeyRow(
                key_id=key_id,
                key_sha256=digest(key),
                prefix=key[: len(KEY_PREFIX) + len(key_id) + 1],
                tenant=tenant,
                role=role,
                description=description,
                created_at=now,
                created_by=created_by,
                revoked_at=None,
                revoked_reason="",
            )
            session.add(row)
            await session.flush()
            role_name = admin_pb2.KeyRole.Name(admin_pb2.KeyRole.ValueType(role))
            await self._audit(
                session,
                audit_record(
                    SERVICE,
                    "key.create",
                    "api_key",
                    key_id,
                    resource_tenant=tenant,
                    detail=role_name,
                    at=now,
                ),
            )
            return key_to_proto(row), key

    @db_operation
    async def list_keys(self, tenant: str, include_revoked: bool) -> list[admin_pb2.ApiKey]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.tenant, ApiKeyRow.created_at)
        if tenant:
            query = query.where(ApiKeyRow.tenant == tenant)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        async with self._db.session() as session:
            return [key_to_proto(r) for r in await session.scalars(query)]

    @db_operation
    async def revoke_key(self, key_id: str, reason: str) -> tuple[admin_pb2.ApiKey, bool]:
        """The key after revocation, and whether this call revoked it (False: it already was)."""
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                raise NotFound("api key", key_id)
            if row.revoked_at is not None:
                return key_to_proto(row), False
            row.revoked_at = now
            row.revoked_reason = reason
            await session.flush()
            event = events_pb2.ApiKeyRevoked(
                event_id=f"key/{key_id}/revoked", key_id=key_id, tenant=row.tenant
            )
            event.occurred_at.FromDatetime(now)
            await self._outbox.add(
                session,
                OutboxEvent("registry.key.revoked", event, event.event_id, f"key/{key_id}", now),
            )
            await self._audit(
                session,
                audit_record(
                    SERVICE,
                    "key.revoke",
                    "api_key",
                    key_id,
                    resource_tenant=row.tenant,
                    detail=reason,
                    at=now,
                ),
            )
            return key_to_proto(row), True

    @db_operation
    async def lookup(self, key_sha256: str) -> tuple[admin_pb2.ApiKey, admin_pb2.Tenant] | None:
        """The working key with this digest and its tenant; None when unknown or revoked."""
        async with self._db.session() as session:
            found = (
                await session.execute(
                    select(ApiKeyRow, TenantRow)
                    .join(TenantRow, TenantRow.name == ApiKeyRow.tenant)
                    .where(ApiKeyRow.key_sha256 == key_sha256, ApiKeyRow.revoked_at.is_(None))
                )
            ).first()
            if found is None:
                return None
            return key_to_proto(found[0]), tenant_to_proto(found[1])

    # -- the audit log ----------------------------------------------------------------------
    @db_operation
    async def record_audit(self, records: Sequence[admin_pb2.AuditEvent]) -> int:
        """Store records from other services, each once (a redelivery is dropped by its event
        id); returns how many were new."""
        if not records:
            return 0
        stmt = self._insert(AuditRow).on_conflict_do_nothing(index_elements=["event_id"])
        async with self._db.session() as session, session.begin():
            stored = 0
            for record in records:
                result = await session.execute(stmt.values(**_audit_values(record)))
                stored += int(getattr(result, "rowcount", 0) or 0)
        return stored

    @db_operation
    async def audit(self, query: AuditQuery) -> tuple[list[admin_pb2.AuditEvent], int]:
        """Matching records, newest first, and the seq to continue below (0: no more)."""
        stmt = select(AuditRow).order_by(AuditRow.seq.desc()).limit(query.limit + 1)
        for column, value in (
            (AuditRow.actor_tenant, query.actor_tenant),
            (AuditRow.action, query.action),
            (AuditRow.resource_type, query.resource_type),
            (AuditRow.resource_id, query.resource_id),
        ):
            if value:
                stmt = stmt.where(column == value)
        if query.before_seq:
            stmt = stmt.where(AuditRow.seq < query.before_seq)
        async with self._db.session() as session:
            rows = list(await session.scalars(stmt))
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return [audit_to_proto(r) for r in rows], (rows[-1].seq if more and rows else 0)
