"""API keys -> tenants: the bootstrap keys of the configuration, then the registry's key store.

Keys are only ever handled as SHA-256 digests. Bootstrap keys (``POCGRID_API_KEYS`` /
``_FILE``) are read once at start and always work: they are how the first admin key reaches a
new mesh. Any other key is looked up in the registry's store (``TenantDirectoryService/
LookupKey``) and the answer cached for a short time, so the hot path stays a dictionary probe.

Revocation beats the cache: the gateway that forwarded a RevokeKey drops the key before it
answers (``forget_key``), every other gateway when the ``registry.key.revoked`` event reaches
it. Events can only be missed while the bus is down, so the cache trusts an entry for its full
TTL only while the NATS connection has stayed up since the entry was fetched; otherwise for
``offline_ttl_s`` (a second), and a reconnect invalidates everything fetched before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.core.apikeys import digest, read_key_config
from services.core.errors import Unauthenticated

#: A lookup in the store: the key's tenant, or None for an unknown or revoked key. Raises
#: ``Unavailable`` when the store cannot answer.
Lookup = Callable[[str], Awaitable["Tenant | None"]]
#: Whether the bus is connected, and a number that changes on every disconnect and reconnect.
BusState = Callable[[], tuple[bool, int]]

#: Unknown keys remembered (so a flood of one wrong key is not a flood of lookups), at most.
_NEGATIVE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    rate_per_s: float
    burst: int
    admin: bool = False
    """An admin key: may also read every tenant's usage and invoices, and use AdminService."""
    key_id: str = ""
    """The store's key id, or ``env-<digest prefix>`` for a bootstrap key (the audit's "who")."""


@dataclass(slots=True)
class _Entry:
    tenant: Tenant
    fetched: float  # time.monotonic()
    bus_stamp: int


def _no_bus() -> tuple[bool, int]:
    return False, 0


class ApiKeys:
    def __init__(
        self,
        bootstrap: dict[str, Tenant],
        lookup: Lookup | None = None,
        *,
        ttl_s: float = 10.0,
        offline_ttl_s: float = 1.0,
        negative_ttl_s: float = 2.0,
        bus_state: BusState = _no_bus,
    ) -> None:
        self._bootstrap = bootstrap
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._offline_ttl_s = offline_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._bus_state = bus_state
        self._cache: dict[str, _Entry] = {}
        self._unknown: dict[str, float] = {}  # digest -> until (time.monotonic())
        self._inflight: dict[str, asyncio.Future[Tenant | None]] = {}
        # Bumped by every eviction: a lookup that started before one must not cache its answer
        # (it may have read the key just before it was revoked).
        self._evictions = 0

    def __len__(self) -> int:
        return len(self._bootstrap)

    @property
    def has_store(self) -> bool:
        return self._lookup is not None

    @classmethod
    def load(
        cls,
        inline: str,
        file: str,
        rate_per_s: float,
        burst: int,
        lookup: Lookup | None = None,
        *,
        ttl_s: float = 10.0,
        bus_state: BusState = _no_bus,
    ) -> ApiKeys:
        # One reading of the key configuration, shared with metering (which tenants exist).
        entries: dict[str, Tenant] = {
            e.key_sha256: Tenant(
                e.tenant,
                e.rate_per_s if e.rate_per_s is not None else rate_per_s,
                e.burst if e.burst is not None else burst,
                e.admin,
                f"env-{e.key_sha256[:10]}",
            )
            for e in read_key_config(inline, file)
        }
        return cls(entries, lookup, ttl_s=ttl_s, bus_state=bus_state)

    async def authenticate(self, authorization: str | None) -> Tenant:
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
        key_digest = digest(key.strip())
        tenant = self._bootstrap.get(key_digest)
        if tenant is not None:
            return tenant
        if self._lookup is None:
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        entry = self._cache.get(key_digest)
        now = time.monotonic()
        if entry is not None and self._fresh(entry, now):
            return entry.tenant
        until = self._unknown.get(key_digest)
        if until is not None and now < until:
            raise Unauthenticated("unknown API key", reason="API_KEY_UNKNOWN")
        found = await self._look_up(key_digest)
        if found is None:
            raise Unauthenticated("unknown API key (or revoked)", reason="API_KEY_UNKNOWN")
        return found

    def _fresh(self, entry: _Entry, now: float) -> bool:
        connected, stamp = self._bus_state()
        if stamp != entry.bus_stamp:
            return False
        return now - entry.fetched < (self._ttl_s if connected else self._offline_ttl_s)

    async def _look_up(self, key_digest: str) -> Tenant | None:
        # Concurrent calls with one key share one lookup.
        pending = self._inflight.get(key_digest)
        if pending is not None:
            return await asyncio.shield(pending)
        assert self._lookup is not None
        future: asyncio.Future[Tenant | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_digest] = future
        evictions = self._evictions
        _, stamp = self._bus_state()
        try:
            tenant = await self._lookup(key_digest)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(key_digest, None)
        future.set_result(tenant)
        if evictions == self._evictions:
            if tenant is None:
                if len(self._unknown) >= _NEGATIVE_MAX:
                    self._unknown.clear()
                self._unknown[key_digest] = time.monotonic() + self._negative_ttl_s
            else:
                self._cache[key_digest] = _Entry(tenant, time.monotonic(), stamp)
        return tenant

    # -- what changes in the store ----------------------------------------------------------
    def forget_key(self, key_id: str) -> None:
        """A key was revoked: its next use is looked up again (and refused)."""
        self._evictions += 1
        for key_digest, entry in list(self._cache.items()):
            if entry.tenant.key_id == key_id:
                del self._cache[key_digest]

    def forget_tenant(self, name: str) -> None:
        """A tenant's limits changed: its keys are looked up again, with the new ones."""
        self._evictions += 1
        for key_digest, entry in list(self._cache.items()):
            if entry.tenant.name == name:
                del self._cache[key_digest]

    def forget_all(self) -> None:
        self._evictions += 1
        self._cache.clear()
