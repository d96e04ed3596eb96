"""Token buckets: per tenant for authenticated calls, per peer for calls without valid
credentials.

A call that fails authentication still costs the gateway a digest, a log line and a reply, and
is how an API key would be guessed; so each client address has its own (small) bucket for such
calls, shared by the gRPC port and the HTTP endpoint. Peers are keyed by IP address, without the
port (a new connection must not buy a new bucket), and IPv6 by its /64 (one host typically
holds a whole /64). The table of peers is bounded: the least recently refused peer is forgotten
first, so a flood from many addresses costs memory only up to the bound.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass

from gateway.auth import Tenant
from services.core.errors import PocgridError, ResourceExhausted

#: Peers whose buckets are remembered; beyond this the least recently seen is dropped.
MAX_PEERS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def take(self, rate_per_s: float, burst: int, now: float) -> float:
        """Take one token; returns 0.0 when taken, else the seconds until one is there."""
        self.tokens = min(float(burst), self.tokens + (now - self.updated) * rate_per_s)
        self.updated = now
        if self.tokens < 1.0:
            return (1.0 - self.tokens) / rate_per_s
        self.tokens -= 1.0
        return 0.0


def peer_key(peer: str) -> str:
    """The bucket a client address counts against: gRPC's ``ipv4:1.2.3.4:5678`` or
    ``ipv6:[2001:db8::1]:5678``, or aiohttp's bare ``1.2.3.4`` -> ``1.2.3.4`` or
    ``2001:db8::/64``; anything else (a Unix socket) counts as itself."""
    text = urllib.parse.unquote(peer)  # gRPC writes ipv6:%5B::1%5D:port
    for prefix in ("ipv4:", "ipv6:"):
        if text.startswith(prefix):
            text = text.removeprefix(prefix)
            text = text.rpartition(":")[0] if text.count(":") == 1 or text.startswith("[") else text
            break
    text = text.strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class RateLimiter:
    def __init__(self, unauthenticated_rate_per_s: float = 5.0, unauthenticated_burst: int = 20):
        self._buckets: dict[str, _Bucket] = {}
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()
        self._peer_rate = unauthenticated_rate_per_s
        self._peer_burst = unauthenticated_burst

    def acquire(self, tenant: Tenant) -> None:
        now = time.monotonic()
        bucket = self._buckets.get(tenant.name)
        if bucket is None:
            bucket = self._buckets[tenant.name] = _Bucket(float(tenant.burst), now)
        wait_s = bucket.take(tenant.rate_per_s, tenant.burst, now)
        if wait_s:
            wait_ms = wait_s * 1000
            raise ResourceExhausted(
                f"rate limit exceeded for tenant '{tenant.name}': {tenant.rate_per_s:g} "
                f"requests/s, burst {tenant.burst}; retry in {wait_ms:.0f} ms",
                retry_after_s=wait_s,
                reason="RATE_LIMITED",
                metadata={
                    "tenant": tenant.name,
                    "rate_per_s": f"{tenant.rate_per_s:g}",
                    "burst": str(tenant.burst),
                },
            )

    def refuse_unauthenticated(self, peer: str, error: PocgridError) -> PocgridError:
        """What a call that failed authentication gets: ``error`` while the peer has tokens
        left, RESOURCE_EXHAUSTED once it has used its burst of such calls."""
        key = peer_key(peer)
        now = time.monotonic()
        bucket = self._peers.get(key)
        if bucket is None:
            bucket = self._peers[key] = _Bucket(float(self._peer_burst), now)
            if len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(key)
        wait_s = bucket.take(self._peer_rate, self._peer_burst, now)
        if not wait_s:
            return error
        wait_ms = wait_s * 1000
        return ResourceExhausted(
            f"rate limit exceeded for unauthenticated requests from {key}: "
            f"{self._peer_rate:g} requests/s, burst {self._peer_burst} "
            f"(POCGRID_UNAUTHENTICATED_RATE_PER_S, POCGRID_UNAUTHENTICATED_BURST); "
            f"retry in {wait_ms:.0f} ms",
            retry_after_s=wait_s,
            reason="RATE_LIMITED_UNAUTHENTICATED",
            metadata={
                "peer": key,
                "rate_per_s": f"{self._peer_rate:g}",
                "burst": str(self._peer_burst),
            },
        )
