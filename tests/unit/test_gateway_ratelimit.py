"""The gateway's per-peer budget for calls without valid credentials (gateway/ratelimit.py)."""

from __future__ import annotations

import grpc
import pytest

from gateway import ratelimit
from gateway.ratelimit import RateLimiter, peer_key
from services.core.errors import Unauthenticated


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:203.0.113.7:50123", "203.0.113.7"),
        ("ipv6:[2001:db8:1:2::7]:50123", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:aaaa::1%5D:443", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:203.0.113.7]:1", "203.0.113.7"),
        ("203.0.113.7", "203.0.113.7"),  # aiohttp's request.remote
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("unix:/run/gw.sock", "unix:/run/gw.sock"),
    ],
)
def test_peer_key(peer: str, key: str) -> None:
    assert peer_key(peer) == key


def test_a_new_port_is_the_same_peer_and_others_keep_their_budget() -> None:
    limiter = RateLimiter(unauthenticated_rate_per_s=0.001, unauthenticated_burst=2)
    error = Unauthenticated("unknown API key")
    assert limiter.refuse_unauthenticated("ipv4:198.51.100.1:1000", error) is error
    assert limiter.refuse_unauthenticated("ipv4:198.51.100.1:1001", error) is error
    refused = limiter.refuse_unauthenticated("ipv4:198.51.100.1:1002", error)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "198.51.100.1" in refused.message and "burst 2" in refused.message
    assert limiter.refuse_unauthenticated("ipv4:198.51.100.2:1000", error) is error


def test_the_peer_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_PEERS", 3)
    limiter = RateLimiter(unauthenticated_rate_per_s=0.001, unauthenticated_burst=1)
    error = Unauthenticated("unknown API key")
    for i in range(10):
        limiter.refuse_unauthenticated(f"10.0.0.{i}", error)
    assert len(limiter._peers) == 3
    # The most recent peers are the ones remembered (and still refused).
    assert limiter.refuse_unauthenticated("10.0.0.9", error) is not error
