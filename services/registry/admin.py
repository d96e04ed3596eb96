"""gRPC servicers of the key and tenant store: the public, admin-only AdminService and the
internal TenantDirectoryService the gateways, the scheduler and metering read."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import grpc

from pocgrid.v1 import admin_pb2, admin_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.apikeys import TENANT_RE
from services.core.errors import InvalidArgument, NotFound, PermissionDenied
from services.registry.keys import AuditQuery, KeyStore, TenantChanges

#: Most devices a quota may name, and most requests per second a rate limit may: beyond any
#: pool or gateway, so a larger number is a typo.
MAX_DEVICES = 1_000_000.0
MAX_RATE = 1_000_000.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^k[0-9a-f]{12}$")
_ROLES = {
    admin_pb2.KEY_ROLE_UNSPECIFIED: admin_pb2.KEY_ROLE_TENANT,
    admin_pb2.KEY_ROLE_TENANT: admin_pb2.KEY_ROLE_TENANT,
    admin_pb2.KEY_ROLE_ADMIN: admin_pb2.KEY_ROLE_ADMIN,
}


def require_admin() -> None:
    # The gateway refuses non-admin keys before forwarding; checked again here so the store is
    # not open to a caller that reached the registry some other way.
    if not rpc_context.current_is_admin():
        raise PermissionDenied("AdminService needs an admin API key", reason="ADMIN_KEY_REQUIRED")


def tenant_name(field: str, value: str) -> str:
    v.require_text(field, value, 63)
    if not TENANT_RE.match(value):
        raise InvalidArgument(field, "must match [a-z0-9][a-z0-9_-]{0,62}")
    return value


def devices_milli(field: str, value: float) -> int:
    if not math.isfinite(value) or not 0 <= value <= MAX_DEVICES:
        raise InvalidArgument(field, f"must be a number of devices in 0..{MAX_DEVICES:g}")
    return round(value * 1000)


def rate(field: str, value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= MAX_RATE:
        raise InvalidArgument(field, f"must be in 0..{MAX_RATE:g} requests/s (0: default)")
    return value


def burst(field: str, value: int) -> int:
    if not 0 <= value <= MAX_RATE:
        raise InvalidArgument(field, f"must be in 0..{MAX_RATE:g} requests (0: default)")
    return value


def key_id(field: str, value: str) -> str:
    v.require_text(field, value, 32)
    if not _KEY_ID_RE.match(value):
        raise InvalidArgument(field, "must be a key id as listed, 'k' and 12 hex digits")
    return value


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: KeyStore, notify: Callable[[], None]) -> None:
        self._store = store
        # Tells the outbox relay that events were committed (never waits on the bus).
        self._notify = notify

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateTenantResponse:
        require_admin()
        tenant = await self._store.create_tenant(
            tenant_name("name", request.name),
            devices_milli("guaranteed_devices", request.guaranteed_devices),
            devices_milli("borrow_limit_devices", request.borrow_limit_devices)
            if request.HasField("borrow_limit_devices")
            else None,
            rate("rate_limit_per_s", request.rate_limit_per_s),
            burst("burst", request.burst),
        )
        self._notify()
        return admin_pb2.CreateTenantResponse(tenant=tenant)

    async def GetTenant(
        self, request: admin_pb2.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetTenantResponse:
        require_admin()
        tenant = await self._store.get_tenant(tenant_name("name", request.name))
        return admin_pb2.GetTenantResponse(tenant=tenant)

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTenantsResponse:
        require_admin()
        return admin_pb2.ListTenantsResponse(tenants=await self._store.list_tenants())

    async def UpdateTenant(
        self, request: admin_pb2.UpdateTenantRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.UpdateTenantResponse:
        require_admin()
        name = tenant_name("name", request.name)
        if request.clear_borrow_limit and request.HasField("borrow_limit_devices"):
            raise InvalidArgument(
                "clear_borrow_limit", "cannot be set together with borrow_limit_devices"
            )
        changes = TenantChanges(
            guaranteed_milli=devices_milli("guaranteed_devices", request.guaranteed_devices)
            if request.HasField("guaranteed_devices")
            else None,
            borrow_limit_milli=devices_milli("borrow_limit_devices", request.borrow_limit_devices)
            if request.HasField("borrow_limit_devices")
            else None,
            clear_borrow_limit=request.clear_borrow_limit,
            rate_limit_per_s=rate("rate_limit_per_s", request.rate_limit_per_s)
            if request.HasField("rate_limit_per_s")
            else None,
            burst=burst("burst", request.burst) if request.HasField("burst") else None,
        )
        tenant = await self._store.update_tenant(name, changes)
        self._notify()
        return admin_pb2.UpdateTenantResponse(tenant=tenant)

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CreateKeyResponse:
        require_admin()
        tenant = tenant_name("tenant", request.tenant)
        role = _ROLES.get(request.role)
        if role is None:
            raise InvalidArgument("role", "must be KEY_ROLE_TENANT or KEY_ROLE_ADMIN")
        description = v.optional_text("description", request.description, 256)
        created_by = rpc_context.current_key_id() or rpc_context.current_tenant()
        key, secret = await self._store.create_key(tenant, role, description, created_by)
        return admin_pb2.CreateKeyResponse(key=key, secret=secret)

    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListKeysResponse:
        require_admin()
        tenant = tenant_name("tenant", request.tenant) if request.tenant else ""
        keys = await self._store.list_keys(tenant, request.include_revoked)
        return admin_pb2.ListKeysResponse(keys=keys)

    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeKeyResponse:
        require_admin()
        key, revoked = await self._store.revoke_key(
            key_id("key_id", request.key_id), v.optional_text("reason", request.reason, 512)
        )
        if revoked:
            self._notify()
        return admin_pb2.RevokeKeyResponse(key=key)

    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAuditEventsResponse:
        require_admin()
        query = AuditQuery(
            actor_tenant=v.optional_text("actor_tenant", request.actor_tenant, 63),
            action=v.optional_text("action", request.action, 64),
            resource_type=v.optional_text("resource_type", request.resource_type, 64),
            resource_id=v.optional_text("resource_id", request.resource_id, 200),
            limit=v.page_size("limit", request.limit),
            before_seq=v.page_offset("page_token", request.page_token),
        )
        events, next_seq = await self._store.audit(query)
        return admin_pb2.ListAuditEventsResponse(
            events=events, next_page_token=str(next_seq) if next_seq else ""
        )


class TenantDirectoryServicer(admin_pb2_grpc.TenantDirectoryServiceServicer):
    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def LookupKey(
        self, request: admin_pb2.LookupKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.LookupKeyResponse:
        if not _SHA256_RE.match(request.key_sha256):
            raise InvalidArgument("key_sha256", "must be 64 lower-case hex digits")
        found = await self._store.lookup(request.key_sha256)
        if found is None:
            # The digest is not echoed: it names a key some caller presented.
            raise NotFound("api key", "with this digest", "unknown or revoked")
        key, tenant = found
        return admin_pb2.LookupKeyResponse(key=key, tenant=tenant)

    async def SnapshotTenants(
        self, request: admin_pb2.SnapshotTenantsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SnapshotTenantsResponse:
        return admin_pb2.SnapshotTenantsResponse(tenants=await self._store.list_tenants())
