"""What a service knows of the registry's tenants (the key and tenant store), kept current
without a restart: a snapshot at start (``SnapshotTenants``), then every ``registry.tenant.*``
event as it is published, and a fresh snapshot after the bus reconnected (events may have been
missed meanwhile), every ``resync_s``, and when asked (``refresh``: a caller met a tenant it
does not know yet).

Each replica hears every event (a plain NATS subscription, not a shared durable consumer) and
applies a tenant only when its revision is newer than the one it holds, so replays, reorderings
and a snapshot racing an event all end in the newest state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import grpc

from pocgrid.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from services.core.bus import EventBus
from services.core.logging import get_logger

log = get_logger()

#: Called with every tenant held, after any of them changed.
OnChange = Callable[[Mapping[str, admin_pb2.Tenant]], Awaitable[None]]
_SNAPSHOT_TIMEOUT_S = 5.0
#: How often the loop looks whether the bus reconnected (a cheap attribute read).
_POLL_S = 0.5


class TenantDirectory:
    def __init__(
        self,
        stub: admin_pb2_grpc.TenantDirectoryServiceStub,
        bus: EventBus,
        on_change: OnChange,
        *,
        resync_s: float = 60.0,
        min_refresh_interval_s: float = 1.0,
    ) -> None:
        self._stub = stub
        self._bus = bus
        self._on_change = on_change
        self._resync_s = resync_s
        self._min_refresh_s = min_refresh_interval_s
        self._tenants: dict[str, admin_pb2.Tenant] = {}
        self._last_sync = -float("inf")  # time.monotonic() of the last snapshot asked for
        self._last_refresh = -float("inf")  # ... and of the last one a caller asked for
        self._sync_lock = asyncio.Lock()
        self.synced = asyncio.Event()
        """Set once the first snapshot is in."""

    @property
    def tenants(self) -> Mapping[str, admin_pb2.Tenant]:
        return MappingProxyType(self._tenants)

    async def run(self) -> None:
        """Subscribe, take snapshots until one succeeds, then keep up (a background task)."""
        await self._bus.subscribe("registry.tenant.>", events_pb2.TenantChanged, self._heard)
        changes = self._bus.connection_changes
        delay = 0.2
        while not self.synced.is_set():
            if await self._sync():
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        while True:
            await asyncio.sleep(_POLL_S)
            reconnected = self._bus.connection_changes != changes and self._bus.connected
            if reconnected or time.monotonic() - self._last_sync > self._resync_s:
                changes = self._bus.connection_changes
                await self._sync()

    async def refresh(self) -> Mapping[str, admin_pb2.Tenant]:
        """A snapshot now, unless a caller asked for one within ``min_refresh_interval_s`` (a
        flood of events for an unknown tenant must not become a flood of snapshots)."""
        now = time.monotonic()
        if now - self._last_refresh >= self._min_refresh_s:
            self._last_refresh = now
            await self._sync()
        return self.tenants

    async def _sync(self) -> bool:
        async with self._sync_lock:
            self._last_sync = time.monotonic()
            try:
                snapshot = await self._stub.SnapshotTenants(
                    admin_pb2.SnapshotTenantsRequest(), timeout=_SNAPSHOT_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("tenants.snapshot_failed", code=exc.code().name, error=exc.details())
                return False
            changed = [t for t in snapshot.tenants if self._newer(t)]
            for tenant in changed:
                self._tenants[tenant.name] = tenant
            first = not self.synced.is_set()
            self.synced.set()
            if changed or first:
                log.info("tenants.synced", tenants=len(self._tenants), changed=len(changed))
                await self._on_change(self.tenants)
            return True

    def _newer(self, tenant: admin_pb2.Tenant) -> bool:
        held = self._tenants.get(tenant.name)
        return held is None or tenant.revision > held.revision

    async def _heard(self, event: events_pb2.TenantChanged) -> None:
        if not event.tenant.name or not self._newer(event.tenant):
            return
        self._tenants[event.tenant.name] = event.tenant
        log.info("tenants.changed", tenant=event.tenant.name, revision=event.tenant.revision)
        await self._on_change(self.tenants)
