"""Per-tenant token buckets."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.auth import Tenant
from services.core.errors import ResourceExhausted


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, tenant: Tenant) -> None:
        now = time.monotonic()
        bucket = self._buckets.get(tenant.name)
        if bucket is None:
            bucket = self._buckets[tenant.name] = _Bucket(float(tenant.burst), now)
        bucket.tokens = min(
            float(tenant.burst), bucket.tokens + (now - bucket.updated) * tenant.rate_per_s
        )
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait_ms = (1.0 - bucket.tokens) / tenant.rate_per_s * 1000
            raise ResourceExhausted(
                f"rate limit exceeded for tenant '{tenant.name}': {tenant.rate_per_s:g} "
                f"requests/s, burst {tenant.burst}; retry in {wait_ms:.0f} ms",
                retry_after_s=wait_ms / 1000,
                reason="RATE_LIMITED",
                metadata={
                    "tenant": tenant.name,
                    "rate_per_s": f"{tenant.rate_per_s:g}",
                    "burst": str(tenant.burst),
                },
            )
        bucket.tokens -= 1.0
