"""The audit log: one way for any service to record who did what to which resource, when, with
what result.

A service builds the record with ``audit_event(...)`` and writes it to its own outbox in the
same transaction as the change it records (``Outbox.add(session, ..., audit)``), so a change is
never committed without its audit record and an RPC never waits on the bus; the relay publishes
it on ``audit.<service>.<action>`` (the ``POCGRID_AUDIT`` stream) and the registry, which hosts
the key and tenant store, consumes the stream and stores each record once (its event id is the
``Nats-Msg-Id`` and a unique key). The registry's own records (keys, tenants, nodes) go straight
into its audit table in the transaction of the change: they are already where they are kept.

Who: the tenant and key id the gateway authenticated (``rpc_context``), or the service acting on
its own (``actor_service``) when no caller is behind it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

from pocgrid.v1 import admin_pb2
from services.core import rpc_context
from services.core.outbox import OutboxEvent

AUDIT_STREAM: Final = "POCGRID_AUDIT"
AUDIT_SUBJECTS: Final = "audit.>"
#: Kept long enough for a registry that was down a while to catch up; the log itself is the
#: registry's table.
AUDIT_MAX_AGE_S: Final = 30 * 24 * 3600.0
OK: Final = "OK"


def audit_subject(service: str, action: str) -> str:
    return f"audit.{service}.{action}"


def audit_record(
    service: str,
    action: str,
    resource_type: str,
    resource_id: str,
    *,
    resource_tenant: str = "",
    result: str = OK,
    detail: str = "",
    at: datetime | None = None,
    actor_service: str = "",
) -> admin_pb2.AuditEvent:
    """The record of ``action`` on a resource by the caller of the RPC being served.

    ``actor_service`` names a service acting on its own (no caller behind it, e.g. a lease
    reaper); an RPC's caller is taken from the request context."""
    record = admin_pb2.AuditEvent(
        # Random, and written once with the row: the relay's retries publish the same id.
        event_id=f"audit/{service}/{uuid.uuid4().hex}",
        service=service,
        actor_tenant=rpc_context.current_tenant(),
        actor_key_id=rpc_context.current_key_id(),
        actor_service=actor_service or rpc_context.current_caller(),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        resource_tenant=resource_tenant,
        result=result,
        detail=detail[:1024],
    )
    record.occurred_at.FromDatetime(at or datetime.now(UTC))
    return record


def audit_event(
    service: str,
    action: str,
    resource_type: str,
    resource_id: str,
    *,
    resource_tenant: str = "",
    result: str = OK,
    detail: str = "",
    at: datetime | None = None,
    actor_service: str = "",
) -> OutboxEvent:
    """``audit_record`` as an outbox event, for ``Outbox.add`` in the change's transaction."""
    record = audit_record(
        service,
        action,
        resource_type,
        resource_id,
        resource_tenant=resource_tenant,
        result=result,
        detail=detail,
        at=at,
        actor_service=actor_service,
    )
    return OutboxEvent(
        subject=audit_subject(service, action),
        message=record,
        event_id=record.event_id,
        # One aggregate per resource: its records are published in the order they were made.
        aggregate=f"audit/{resource_type}/{resource_id}",
        at=at,
    )
