"""API keys -> tenants. Keys are kept only as SHA-256 digests in memory."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.apikeys import digest, read_key_config
from services.core.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    rate_per_s: float
    burst: int
    admin: bool = False
    """An admin key: may also read every tenant's usage and invoices."""


class ApiKeys:
    def __init__(self, tenants_by_digest: dict[str, Tenant]) -> None:
        self._by_digest = tenants_by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, inline: str, file: str, rate_per_s: float, burst: int) -> ApiKeys:
        # One reading of the key configuration, shared with metering (which tenants exist).
        entries: dict[str, Tenant] = {
            e.key_sha256: Tenant(
                e.tenant,
                e.rate_per_s if e.rate_per_s is not None else rate_per_s,
                e.burst if e.burst is not None else burst,
                e.admin,
            )
            for e in read_key_config(inline, file)
        }
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
