"""``pocgrid admin keys|tenants|audit``: the key and tenant store and the audit log, through the
gateway with an admin API key (AdminService).

``keys create`` prints the new key once: the store keeps only its digest, so nothing can show it
again. ``keys revoke`` takes effect at once on every gateway.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import resolve
from pocgrid.client import Client
from pocgrid.v1 import admin_pb2


def _devices(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of devices") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of devices >= 0 (got {text})")
    return value


def register(admin_sub: Any) -> None:
    """Add ``keys``, ``tenants`` and ``audit`` under ``pocgrid admin``."""
    keys = admin_sub.add_parser("keys", help="API keys (an admin key is needed)")
    verbs = keys.add_subparsers(dest="keys_command", required=True, metavar="VERB")
    p = verbs.add_parser("create", help="a new key for a tenant; printed once, never again")
    p.add_argument("--tenant", required=True)
    p.add_argument("--admin", action="store_true", help="an admin key (AdminService, all usage)")
    p.add_argument("--description", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=create_key)
    p = verbs.add_parser("list", help="keys (ids and prefixes; never the keys)")
    p.add_argument("--tenant", default="")
    p.add_argument("--revoked", action="store_true", help="include revoked keys")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_keys)
    p = verbs.add_parser("revoke", help="revoke a key: it stops working at once")
    p.add_argument("key_id", metavar="ID")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=revoke_key)

    tenants = admin_sub.add_parser("tenants", help="tenants and their quotas")
    verbs = tenants.add_subparsers(dest="tenants_command", required=True, metavar="VERB")
    for verb, func, what in (
        ("create", create_tenant, "a new tenant"),
        ("update", update_tenant, "change a tenant's quotas (applied without a restart)"),
    ):
        p = verbs.add_parser(verb, help=what)
        p.add_argument("name")
        p.add_argument("--guaranteed", type=_devices, help="devices always available to it")
        limit = p.add_mutually_exclusive_group()
        limit.add_argument("--borrow-limit", type=_devices, help="devices it may borrow above")
        if verb == "update":
            limit.add_argument("--no-borrow-limit", action="store_true", help="borrow freely")
        p.add_argument("--rate", type=float, help="gateway requests/s (0: the default)")
        p.add_argument("--burst", type=int, help="gateway burst (0: the default)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = verbs.add_parser("list", help="every tenant with its quotas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_tenants)

    p = admin_sub.add_parser("audit", help="the audit log, newest first (an admin key is needed)")
    p.add_argument("--tenant", default="", help="only what this tenant's keys did")
    p.add_argument("--action", default="", help="e.g. job.cancel, key.revoke, node.deregister")
    p.add_argument("--resource", default="", help="only this resource id")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=audit)


def _client(args: argparse.Namespace) -> Client:
    target = resolve(args, admin=True)
    return Client(target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _role(role: int) -> str:
    return "admin" if role == admin_pb2.KEY_ROLE_ADMIN else "tenant"


def _key_dict(key: admin_pb2.ApiKey) -> dict[str, Any]:
    out = _dict(key)
    out["role"] = _role(key.role)
    return out


def _when(message: Message, field: str) -> str:
    if not message.HasField(field):
        return ""
    return str(getattr(message, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def create_key(args: argparse.Namespace) -> int:
    role = admin_pb2.KEY_ROLE_ADMIN if args.admin else admin_pb2.KEY_ROLE_TENANT
    with _client(args) as pg:
        created = pg.admin.CreateKey(
            admin_pb2.CreateKeyRequest(tenant=args.tenant, role=role, description=args.description)
        )
    if args.json:
        emit_json({"key": _key_dict(created.key), "secret": created.secret})
        return 0
    say(created.secret)
    say(
        f"\nkey {created.key.key_id} ({_role(created.key.role)}) for tenant {created.key.tenant}: "
        "store it now, it is not shown again"
    )
    return 0


def list_keys(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        keys = pg.admin.ListKeys(
            admin_pb2.ListKeysRequest(tenant=args.tenant, include_revoked=args.revoked)
        ).keys
    if args.json:
        emit_json([_key_dict(k) for k in keys])
        return 0
    if not keys:
        say("no keys in the store (bootstrap keys of the gateway's configuration are not listed)")
        return 0
    say(
        table(
            ["id", "prefix", "tenant", "role", "created", "revoked", "description"],
            [
                [
                    k.key_id,
                    k.prefix + "...",
                    k.tenant,
                    _role(k.role),
                    _when(k, "created_at"),
                    _when(k, "revoked_at"),
                    k.description,
                ]
                for k in keys
            ],
        )
    )
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        key = pg.admin.RevokeKey(
            admin_pb2.RevokeKeyRequest(key_id=args.key_id, reason=args.reason)
        ).key
    if args.json:
        emit_json(_key_dict(key))
        return 0
    say(f"key {key.key_id} of tenant {key.tenant} revoked at {_when(key, 'revoked_at')} UTC")
    return 0


def _tenant_row(t: admin_pb2.Tenant) -> list[Any]:
    borrow = f"{t.borrow_limit_devices:g}" if t.HasField("borrow_limit_devices") else "no limit"
    return [
        t.name,
        f"{t.guaranteed_devices:g}",
        borrow,
        f"{t.rate_limit_per_s:g}" if t.rate_limit_per_s else "default",
        str(t.burst) if t.burst else "default",
        t.revision,
    ]


_TENANT_HEADERS = ["tenant", "guaranteed", "borrow limit", "rate/s", "burst", "revision"]


def _show_tenant(args: argparse.Namespace, tenant: admin_pb2.Tenant) -> int:
    if args.json:
        emit_json(_dict(tenant))
    else:
        say(table(_TENANT_HEADERS, [_tenant_row(tenant)]))
    return 0


def create_tenant(args: argparse.Namespace) -> int:
    request = admin_pb2.CreateTenantRequest(
        name=args.name,
        guaranteed_devices=args.guaranteed or 0.0,
        rate_limit_per_s=args.rate or 0.0,
        burst=args.burst or 0,
    )
    if args.borrow_limit is not None:
        request.borrow_limit_devices = args.borrow_limit
    with _client(args) as pg:
        return _show_tenant(args, pg.admin.CreateTenant(request).tenant)


def update_tenant(args: argparse.Namespace) -> int:
    request = admin_pb2.UpdateTenantRequest(name=args.name, clear_borrow_limit=args.no_borrow_limit)
    if args.guaranteed is not None:
        request.guaranteed_devices = args.guaranteed
    if args.borrow_limit is not None:
        request.borrow_limit_devices = args.borrow_limit
    if args.rate is not None:
        request.rate_limit_per_s = args.rate
    if args.burst is not None:
        request.burst = args.burst
    with _client(args) as pg:
        return _show_tenant(args, pg.admin.UpdateTenant(request).tenant)


def list_tenants(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        tenants = pg.admin.ListTenants(admin_pb2.ListTenantsRequest()).tenants
    if args.json:
        emit_json([_dict(t) for t in tenants])
        return 0
    if not tenants:
        say("no tenants in the store")
        return 0
    say(table(_TENANT_HEADERS, [_tenant_row(t) for t in tenants]))
    return 0


def audit(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        events = pg.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(
                actor_tenant=args.tenant,
                action=args.action,
                resource_id=args.resource,
                limit=args.limit,
            )
        ).events
    if args.json:
        emit_json([_dict(e) for e in events])
        return 0
    if not events:
        say("the audit log has no matching events")
        return 0
    say(
        table(
            ["when (UTC)", "who", "key", "service", "action", "resource", "result", "detail"],
            [
                [
                    _when(e, "occurred_at"),
                    e.actor_tenant or e.actor_service or "-",
                    e.actor_key_id or "-",
                    e.service,
                    e.action,
                    f"{e.resource_type} {e.resource_id}",
                    e.result,
                    e.detail,
                ]
                for e in events
            ],
        )
    )
    return 0
