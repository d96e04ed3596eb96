"""The API-key configuration, read the same way by the gateway (keys -> tenants) and by
metering (which tenants exist): ``POCGRID_API_KEYS`` and ``POCGRID_API_KEYS_FILE``.

Inline: ``KEY=TENANT[:admin][,KEY=TENANT...]``. File: ``{"keys": [{"key" or "key_sha256",
"tenant", "admin"?, "rate_per_s"?, "burst"?}]}``. An admin key acts for its tenant like any
other, and may also read every tenant's usage and invoices (the gateway says so downstream with
``x-pocgrid-role: admin``; a caller cannot set it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from services.core.config import ConfigError

TENANT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ADMIN_SUFFIX: Final = ":admin"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key_sha256: str
    tenant: str
    admin: bool = False
    rate_per_s: float | None = None
    """None: the gateway's default."""
    burst: int | None = None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _tenant(name: str) -> str:
    if not TENANT_RE.match(name):
        raise ConfigError(f"tenant {name!r}: must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return name


def read_key_config(inline: str, file: str) -> list[KeyEntry]:
    entries: list[KeyEntry] = []
    for pair in filter(None, (p.strip() for p in inline.split(","))):
        key, sep, tenant = pair.partition("=")
        if not sep or not key:
            raise ConfigError("POCGRID_API_KEYS: expected KEY=TENANT[:admin][,KEY=TENANT...]")
        admin = tenant.endswith(ADMIN_SUFFIX)
        entries.append(KeyEntry(digest(key), _tenant(tenant.removesuffix(ADMIN_SUFFIX)), admin))
    if file:
        data = json.loads(Path(file).read_text())
        for i, item in enumerate(data.get("keys", [])):
            key_digest = item.get("key_sha256") or (digest(item["key"]) if "key" in item else "")
            if not key_digest:
                raise ConfigError(f"{file}: keys[{i}] needs 'key' or 'key_sha256'")
            admin = item.get("admin", False)
            if not isinstance(admin, bool):
                raise ConfigError(f"{file}: keys[{i}].admin must be true or false")
            entries.append(
                KeyEntry(
                    key_digest,
                    _tenant(item.get("tenant", "")),
                    admin,
                    float(item["rate_per_s"]) if "rate_per_s" in item else None,
                    int(item["burst"]) if "burst" in item else None,
                )
            )
    return entries


def configured_tenants(inline: str, file: str) -> frozenset[str]:
    """Every tenant some key acts for."""
    return frozenset(e.tenant for e in read_key_config(inline, file))
