"""``pocgrid admin tenants|keys|audit`` through the gateway, as an operator runs them: the
bootstrap admin key makes a tenant and a key, the key works, is listed without its secret, is
revoked and refused at once, and the audit log says who did it."""

from __future__ import annotations

import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer
from tests.integration.test_jobs_cli import _json, _run

pytestmark = pytest.mark.integration

ADMIN_KEY = "cli-boot-admin"
PLAIN_KEY = "cli-plain"


async def test_admin_cli_tenants_keys_and_audit(common, closer, capsys):
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    gw = GatewayServer(
        common,
        GatewayConfig(
            api_keys=f"{ADMIN_KEY}=ops:admin,{PLAIN_KEY}=walker", registry_addr=reg.address
        ),
    )
    await gw.start()
    closer.append(gw)

    async def admin(*args: str) -> tuple[int, str, str]:
        return await _run(capsys, gw, ADMIN_KEY, "admin", *args)

    code, out, _ = await admin(
        "tenants", "create", "acme", "--guaranteed", "2", "--borrow-limit", "1", "--json"
    )
    assert code == 0, out
    assert _json(out)["guaranteed_devices"] == 2 and _json(out)["borrow_limit_devices"] == 1
    code, out, _ = await admin("tenants", "update", "acme", "--no-borrow-limit", "--rate", "5")
    assert code == 0 and "no limit" in out
    code, out, _ = await admin("tenants", "list")
    assert code == 0 and "acme" in out and "no limit" in out

    code, out, _ = await admin("keys", "create", "--tenant", "acme", "--json")
    assert code == 0
    made = _json(out)
    secret, key_id = made["secret"], made["key"]["key_id"]
    assert made["key"]["role"] == "tenant" and made["key"]["tenant"] == "acme"
    code, out, _ = await _run(capsys, gw, secret, "whoami", "--json")
    assert code == 0 and _json(out)["tenant"] == "acme"

    code, out, _ = await admin("keys", "list")
    assert code == 0 and key_id in out and f"pgk_{key_id}_..." in out and secret not in out
    code, out, _ = await admin("keys", "list", "--tenant", "acme", "--json")
    assert [k["key_id"] for k in _json(out)] == [key_id] and secret not in out

    code, out, _ = await admin("keys", "revoke", key_id, "--reason", "rotated")
    assert code == 0 and f"key {key_id} of tenant acme revoked" in out
    code, _, err = await _run(capsys, gw, secret, "whoami")
    assert code != 0 and "UNAUTHENTICATED" in err

    code, out, _ = await admin("audit", "--json")
    assert code == 0
    events = _json(out)
    assert [e["action"] for e in events] == [
        "key.revoke",
        "key.create",
        "tenant.update",
        "tenant.create",
    ]
    assert events[0]["resource_id"] == key_id and events[0]["actor_tenant"] == "ops"
    code, out, _ = await admin("audit", "--action", "key.revoke")
    assert code == 0 and "rotated" in out and "key.create" not in out

    # A tenant key cannot use the admin commands; a bad name is refused naming the rule.
    code, _, err = await _run(capsys, gw, PLAIN_KEY, "admin", "keys", "list")
    assert code != 0 and "PERMISSION_DENIED" in err
    code, _, err = await admin("tenants", "create", "Not Valid")
    assert code != 0 and "name: must match" in err
    code, _, err = await admin("keys", "create", "--tenant", "nobody")
    assert code != 0 and "tenant 'nobody' not found" in err
