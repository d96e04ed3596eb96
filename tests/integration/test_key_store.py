"""The key and tenant store behind the gateway: tenants and keys created, listed and revoked by
an admin key; a revoked key refused at once on the gateway that revoked it and promptly on
another gateway replica (a NATS event); only admin keys reach AdminService; the audit log."""

from __future__ import annotations

import time

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from services.core.apikeys import digest
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

BOOT_ADMIN = "boot-admin-key"
BOOT_TENANT = "boot-tenant-key"


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


ADMIN = auth(BOOT_ADMIN)


async def _registry(common, closer) -> RegistryServer:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    return reg


async def _gateway(common, closer, registry: RegistryServer) -> GatewayServer:
    cfg = GatewayConfig(
        api_keys=f"{BOOT_ADMIN}=ops:admin,{BOOT_TENANT}=walker", registry_addr=registry.address
    )
    gw = GatewayServer(common, cfg)
    await gw.start()
    closer.append(gw)
    # Subscribed to the store's events (it connects to NATS in the background).
    await wait_for(lambda: gw._bus_state()[0], what="gateway connected to NATS")
    return gw


async def _who(channel: grpc.aio.Channel, key: str) -> gateway_pb2.WhoAmIResponse:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    return await stub.WhoAmI(gateway_pb2.WhoAmIRequest(), metadata=auth(key))


async def _refused(channel: grpc.aio.Channel, key: str) -> bool:
    try:
        await _who(channel, key)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
        return True
    return False


async def test_created_key_works_and_revoked_key_stops_at_once_on_every_gateway(common, closer):
    reg = await _registry(common, closer)
    gw1 = await _gateway(common, closer, reg)
    gw2 = await _gateway(common, closer, reg)
    async with (
        grpc.aio.insecure_channel(gw1.address) as ch1,
        grpc.aio.insecure_channel(gw2.address) as ch2,
    ):
        admin = admin_pb2_grpc.AdminServiceStub(ch1)
        tenant = await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="alpha", rate_limit_per_s=50, burst=7),
            metadata=ADMIN,
        )
        assert tenant.tenant.revision == 1 and not tenant.tenant.HasField("borrow_limit_devices")
        created = await admin.CreateKey(
            admin_pb2.CreateKeyRequest(tenant="alpha", description="ci"), metadata=ADMIN
        )
        secret, key_id = created.secret, created.key.key_id
        assert secret.startswith(f"pgk_{key_id}_") and len(secret) > 40
        assert created.key.role == admin_pb2.KEY_ROLE_TENANT
        # The key works on both gateways, as its tenant with the tenant's limits.
        for ch in (ch1, ch2):
            who = await _who(ch, secret)
            assert (who.tenant, who.rate_limit_per_s, who.burst) == ("alpha", 50, 7)

        # Listings show the id and prefix, never the key or its digest.
        listed = await admin.ListKeys(admin_pb2.ListKeysRequest(tenant="alpha"), metadata=ADMIN)
        assert [k.key_id for k in listed.keys] == [key_id]
        assert listed.keys[0].prefix == f"pgk_{key_id}_"
        wire = listed.SerializeToString()
        assert secret.encode() not in wire and digest(secret).encode() not in wire
        assert listed.keys[0].created_by.startswith("env-")  # the bootstrap admin key

        revoked = await admin.RevokeKey(
            admin_pb2.RevokeKeyRequest(key_id=key_id, reason="leaked"), metadata=ADMIN
        )
        started = time.monotonic()
        assert revoked.key.HasField("revoked_at") and revoked.key.revoked_reason == "leaked"
        # The gateway that served the revoke: refused on the very next call.
        assert await _refused(ch1, secret)
        # The other replica had the key cached; the registry.key.revoked event clears it.
        await wait_for(lambda: _refused(ch2, secret), within=3.0, what="gw2 refuses the key")
        lag_ms = (time.monotonic() - started) * 1000
        print(f"second gateway refused the revoked key {lag_ms:.0f} ms after RevokeKey")
        # Revoking again changes nothing and answers the key as it is.
        again = await admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=key_id), metadata=ADMIN)
        assert again.key.revoked_at == revoked.key.revoked_at
        assert again.key.revoked_reason == "leaked"
        assert (
            await admin.ListKeys(admin_pb2.ListKeysRequest(tenant="alpha"), metadata=ADMIN)
        ).keys == []
        with_revoked = await admin.ListKeys(
            admin_pb2.ListKeysRequest(include_revoked=True), metadata=ADMIN
        )
        assert [k.key_id for k in with_revoked.keys] == [key_id]

        # The audit log: who created and revoked the key, and the tenant.
        log = await admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=ADMIN)
        actions = [(e.action, e.resource_id) for e in log.events]
        assert actions == [
            ("key.revoke", key_id),
            ("key.create", key_id),
            ("tenant.create", "alpha"),
        ]
        assert {e.actor_tenant for e in log.events} == {"ops"}
        assert all(e.actor_key_id.startswith("env-") and e.result == "OK" for e in log.events)
        assert log.events[0].detail == "leaked"
        page = await admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(limit=2), metadata=ADMIN
        )
        assert len(page.events) == 2 and page.next_page_token
        rest = await admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(limit=2, page_token=page.next_page_token),
            metadata=ADMIN,
        )
        assert [e.action for e in rest.events] == ["tenant.create"] and not rest.next_page_token


async def test_admin_keys_from_the_store_work_and_tenant_keys_are_refused(common, closer):
    reg = await _registry(common, closer)
    gw = await _gateway(common, closer, reg)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="ops2"), metadata=ADMIN)
        made = await admin.CreateKey(
            admin_pb2.CreateKeyRequest(tenant="ops2", role=admin_pb2.KEY_ROLE_ADMIN),
            metadata=ADMIN,
        )
        store_admin = auth(made.secret)
        listed = await admin.ListTenants(admin_pb2.ListTenantsRequest(), metadata=store_admin)
        assert [t.name for t in listed.tenants] == ["ops2"]
        tenant_key = await admin.CreateKey(
            admin_pb2.CreateKeyRequest(tenant="ops2"), metadata=store_admin
        )
        for key in (BOOT_TENANT, tenant_key.secret):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=auth(key))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "admin API key" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ListKeys(admin_pb2.ListKeysRequest(), metadata=auth("pgk_knope_x"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # The registry checks the role itself too: a service that reaches it without the admin role
    # (a valid gateway token for a tenant) is refused.
    async with service_channel(reg.address, identity="gateway") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin_pb2_grpc.AdminServiceStub(ch).ListKeys(
                admin_pb2.ListKeysRequest(), metadata=(("x-pocgrid-tenant", "ops2"),)
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("method", "request_", "code", "says"),
    [
        (
            "CreateTenant",
            admin_pb2.CreateTenantRequest(name="Bad Name"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name: must match",
        ),
        (
            "CreateTenant",
            admin_pb2.CreateTenantRequest(name="t", guaranteed_devices=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "guaranteed_devices: must be a number of devices",
        ),
        (
            "CreateTenant",
            admin_pb2.CreateTenantRequest(name="t", rate_limit_per_s=float("nan")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rate_limit_per_s",
        ),
        (
            "CreateKey",
            admin_pb2.CreateKeyRequest(tenant="nobody"),
            grpc.StatusCode.NOT_FOUND,
            "tenant 'nobody' not found",
        ),
        (
            "CreateKey",
            admin_pb2.CreateKeyRequest(tenant="ops", role=7),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "role: must be",
        ),
        (
            "RevokeKey",
            admin_pb2.RevokeKeyRequest(key_id="k000000000000"),
            grpc.StatusCode.NOT_FOUND,
            "api key 'k000000000000' not found",
        ),
        (
            "RevokeKey",
            admin_pb2.RevokeKeyRequest(key_id="pgk_secret"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "key_id: must be a key id",
        ),
        (
            "UpdateTenant",
            admin_pb2.UpdateTenantRequest(name="ghost", burst=3),
            grpc.StatusCode.NOT_FOUND,
            "tenant 'ghost' not found",
        ),
        (
            "UpdateTenant",
            admin_pb2.UpdateTenantRequest(
                name="ghost", borrow_limit_devices=1, clear_borrow_limit=True
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "clear_borrow_limit",
        ),
        (
            "ListAuditEvents",
            admin_pb2.ListAuditEventsRequest(page_token="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
    ],
)
async def test_bad_admin_requests_get_the_right_status(
    common, closer, method, request_, code, says
):
    reg = await _registry(common, closer)
    gw = await _gateway(common, closer, reg)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(request_, metadata=ADMIN)
        assert err.value.code() == code
        assert says in (err.value.details() or "")


async def test_tenant_update_and_duplicates(common, closer):
    reg = await _registry(common, closer)
    gw = await _gateway(common, closer, reg)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        await admin.CreateTenant(
            admin_pb2.CreateTenantRequest(
                name="beta", guaranteed_devices=2, borrow_limit_devices=1
            ),
            metadata=ADMIN,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="beta"), metadata=ADMIN)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        key = await admin.CreateKey(admin_pb2.CreateKeyRequest(tenant="beta"), metadata=ADMIN)
        assert (await _who(ch, key.secret)).rate_limit_per_s == gw.config.rate_limit_per_s
        updated = await admin.UpdateTenant(
            admin_pb2.UpdateTenantRequest(
                name="beta", guaranteed_devices=4.5, clear_borrow_limit=True, rate_limit_per_s=9
            ),
            metadata=ADMIN,
        )
        t = updated.tenant
        assert (t.guaranteed_devices, t.HasField("borrow_limit_devices"), t.revision) == (
            4.5,
            False,
            2,
        )
        # The serving gateway applies the tenant's new limits on its next call.
        assert (await _who(ch, key.secret)).rate_limit_per_s == 9
        got = await admin.GetTenant(admin_pb2.GetTenantRequest(name="beta"), metadata=ADMIN)
        assert got.tenant == t
        log = await admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action="tenant.update"), metadata=ADMIN
        )
        assert [e.detail for e in log.events] == [
            "guaranteed=4.5, borrow_limit=none, rate_limit_per_s=9"
        ]
