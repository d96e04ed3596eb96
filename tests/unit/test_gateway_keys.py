"""The gateway's key cache: bootstrap keys, store lookups cached for a TTL that the bus state
bounds, revocations that beat the cache (also one racing a lookup in flight), unknown keys."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth import ApiKeys, Tenant
from services.core.apikeys import digest
from services.core.errors import Unauthenticated, Unavailable

STORE_KEY = "pgk_k0123456789ab_secret"
ALPHA = Tenant("alpha", 10.0, 20, key_id="k0123456789ab")


class Store:
    def __init__(self) -> None:
        self.keys = {digest(STORE_KEY): ALPHA}
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.down = False

    async def lookup(self, key_digest: str) -> Tenant | None:
        self.calls += 1
        found = self.keys.get(key_digest)  # read first: the answer may be stale on arrival
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise Unavailable("registry down")
        return found


class Bus:
    def __init__(self) -> None:
        self.connected = True
        self.changes = 0

    def state(self) -> tuple[bool, int]:
        return self.connected, self.changes


def _keys(store: Store, bus: Bus, ttl_s: float = 60.0) -> ApiKeys:
    return ApiKeys.load(
        "boot=ops:admin", "", 100.0, 200, store.lookup, ttl_s=ttl_s, bus_state=bus.state
    )


async def test_bootstrap_keys_never_reach_the_store_and_store_keys_are_cached():
    store, bus = Store(), Bus()
    keys = _keys(store, bus)
    boot = await keys.authenticate("Bearer boot")
    assert (boot.name, boot.admin, boot.key_id) == ("ops", True, f"env-{digest('boot')[:10]}")
    assert store.calls == 0
    for _ in range(3):
        assert await keys.authenticate(f"Bearer {STORE_KEY}") == ALPHA
    assert store.calls == 1


async def test_revocation_beats_the_cache_and_a_lookup_in_flight():
    store, bus = Store(), Bus()
    keys = _keys(store, bus)
    await keys.authenticate(f"Bearer {STORE_KEY}")
    del store.keys[digest(STORE_KEY)]
    keys.forget_key(ALPHA.key_id)
    with pytest.raises(Unauthenticated):
        await keys.authenticate(f"Bearer {STORE_KEY}")

    # A lookup that read the key before its revocation must not cache it afterwards.
    store.keys[digest(STORE_KEY)] = ALPHA
    keys.forget_all()
    keys._unknown.clear()  # (the refusal above remembered the key as unknown)
    store.gate = asyncio.Event()
    racing = asyncio.create_task(keys.authenticate(f"Bearer {STORE_KEY}"))
    await asyncio.sleep(0.01)
    assert store.calls == 3  # the lookup has read the key as it was: working
    del store.keys[digest(STORE_KEY)]
    keys.forget_key(ALPHA.key_id)  # revoked while that answer is on its way
    store.gate.set()
    assert await racing == ALPHA  # concurrent with the revocation: either answer is right
    store.gate = None
    with pytest.raises(Unauthenticated):
        await keys.authenticate(f"Bearer {STORE_KEY}")
    assert store.calls == 4  # the stale answer was not cached


async def test_without_the_bus_entries_are_trusted_briefly_and_a_reconnect_drops_them():
    store, bus = Store(), Bus()
    keys = _keys(store, bus)
    await keys.authenticate(f"Bearer {STORE_KEY}")
    bus.changes += 1  # disconnected: events may be missed from now on
    bus.connected = False
    await keys.authenticate(f"Bearer {STORE_KEY}")
    assert store.calls == 2  # the entry from before the disconnect is not trusted
    keys._offline_ttl_s = 0.0
    await keys.authenticate(f"Bearer {STORE_KEY}")
    assert store.calls == 3  # offline, an entry lives offline_ttl_s only
    bus.changes += 1
    bus.connected = True
    await keys.authenticate(f"Bearer {STORE_KEY}")
    assert store.calls == 4  # fetched before the reconnect: looked up again


async def test_unknown_keys_are_remembered_briefly_and_store_outages_are_unavailable():
    store, bus = Store(), Bus()
    keys = _keys(store, bus)
    for _ in range(3):
        with pytest.raises(Unauthenticated) as err:
            await keys.authenticate("Bearer pgk_nope")
        assert err.value.reason == "API_KEY_UNKNOWN"
    assert store.calls == 1
    store.down = True
    with pytest.raises(Unavailable):
        await keys.authenticate("Bearer another-key")
    with pytest.raises(Unauthenticated) as err:
        await keys.authenticate("Basic abc")
    assert err.value.reason == "CREDENTIALS_MALFORMED"


async def test_concurrent_calls_with_one_key_share_one_lookup():
    store, bus = Store(), Bus()
    keys = _keys(store, bus)
    store.gate = asyncio.Event()
    calls = [asyncio.create_task(keys.authenticate(f"Bearer {STORE_KEY}")) for _ in range(5)]
    await asyncio.sleep(0.01)
    store.gate.set()
    assert await asyncio.gather(*calls) == [ALPHA] * 5
    assert store.calls == 1
