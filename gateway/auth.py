"""API keys -> tenants. Keys are kept only as SHA-256 digests in memory."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from services.core.config import ConfigError
from services.core.errors import Unauthenticated

_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    rate_per_s: float
    burst: int


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, tenants_by_digest: dict[str, Tenant]) -> None:
        self._by_digest = tenants_by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, inline: str, file: str, rate_per_s: float, burst: int) -> ApiKeys:
        entries: dict[str, Tenant] = {}
        for pair in filter(None, (p.strip() for p in inline.split(","))):
            key, sep, tenant = pair.partition("=")
            if not sep or not key:
                raise ConfigError("POCGRID_API_KEYS: expected KEY=TENANT[,KEY=TENANT...]")
            entries[digest(key)] = _tenant(tenant, rate_per_s, burst)
        if file:
            data = json.loads(Path(file).read_text())
            for i, item in enumerate(data.get("keys", [])):
                key_digest = item.get("key_sha256") or (
                    digest(item["key"]) if "key" in item else ""
                )
                if not key_digest:
                    raise ConfigError(f"{file}: keys[{i}] needs 'key' or 'key_sha256'")
                entries[key_digest] = _tenant(
                    item.get("tenant", ""),
                    float(item.get("rate_per_s", rate_per_s)),
                    int(item.get("burst", burst)),
                )
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Tenant:
        if not authorization:
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <api key>'",
                reason="CREDENTIALS_MISSING",
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "authorization metadata must be 'Bearer <api key>'", reason="CREDENTIALS_MALFORMED"
            )
        tenant = self._by_digest.get(digest(key.strip()))
        if tenant is None:
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        return tenant


def _tenant(name: str, rate: float, burst: int) -> Tenant:
    if not _TENANT_RE.match(name):
        raise ConfigError(f"tenant {name!r}: must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return Tenant(name, rate, burst)
