"""The pool of nodes: registration, leases, heartbeats, LOST detection.

Liveness lives in memory: 1,000 agents heartbeating every 2 s must not mean 500 database commits
a second. Heartbeat times are flushed in batches; registrations, state and health changes are
written through at once. After a restart every READY node gets a fresh lease from the moment the
registry came back, so a registry outage never marks a healthy fleet LOST.

Every change other services hear about is written with its event in one transaction (the
outbox); the relay publishes it afterwards, in order per node, however long NATS is away.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from pocgrid.v1 import common_pb2, events_pb2, registry_pb2
from services.core.audit import audit_record
from services.core.errors import FailedPrecondition, NotFound, PermissionDenied
from services.core.logging import get_logger
from services.core.mesh_identity import is_agent
from services.core.outbox import OutboxEvent
from services.registry.config import RegistryConfig
from services.registry.store import HeartbeatWrite, NodeStore

log = get_logger()

READY = registry_pb2.NODE_STATE_READY
LOST = registry_pb2.NODE_STATE_LOST
DOWN = registry_pb2.NODE_STATE_DOWN


@dataclass(slots=True)
class NodeEntry:
    node: registry_pb2.Node
    generation: int
    lease_deadline: float  # time.monotonic()
    owner: str = ""
    """The agent identity that holds the node id; "" while none does."""
    last_sequence: int = 0
    dirty_memory: dict[int, int] = field(default_factory=dict)
    dirty: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class NodePool:
    def __init__(
        self, config: RegistryConfig, store: NodeStore, notify: Callable[[], None]
    ) -> None:
        self._config = config
        self._store = store
        # Tells the outbox relay that events were committed (never waits on the bus).
        self._notify = notify
        self._ttl_s = config.lease_ttl_ms / 1000
        self._entries: dict[str, NodeEntry] = {}
        self._lock = asyncio.Lock()
        self.epoch = uuid.uuid4().hex[:16]

    async def load(self) -> None:
        deadline = time.monotonic() + self._ttl_s
        for node, generation, owner in await self._store.load():
            self._entries[node.node_id] = NodeEntry(node, generation, deadline, owner=owner)
        log.info("registry.loaded", nodes=len(self._entries), epoch=self.epoch)

    # -- queries ------------------------------------------------------------------------
    def get(self, node_id: str) -> registry_pb2.Node:
        entry = self._entries.get(node_id)
        if entry is None:
            raise NotFound("node", node_id)
        return entry.node

    def nodes(self) -> list[registry_pb2.Node]:
        return [e.node for e in sorted(self._entries.values(), key=lambda e: e.node.node_id)]

    # -- agent lifecycle ----------------------------------------------------------------
    def check_holder(self, node_id: str, caller: str, admin: bool) -> None:
        """PermissionDenied when an agent identity other than the one holding ``node_id`` acts
        for it (a stolen agent key must not renew, take over or deregister another agent's
        node); the admin role may."""
        entry = self._entries.get(node_id)
        if admin or entry is None or not entry.owner or entry.owner == caller:
            return
        raise PermissionDenied(
            f"node '{node_id}' is held by another agent identity, not by {caller!r}",
            reason="NODE_HELD_BY_ANOTHER_AGENT",
            metadata={"node_id": node_id, "caller": caller},
        )

    async def register(
        self, node: registry_pb2.Node, caller: str = "", admin: bool = False
    ) -> registry_pb2.Node:
        """``caller``: the registering identity; an agent's becomes the node's holder. The
        admin role registering by hand releases the node id (no holder until an agent's
        registration claims it)."""
        async with self._lock:
            self.check_holder(node.node_id, caller, admin)
            owner = caller if is_agent(caller) and not admin else ""
            now = _now()
            previous = self._entries.get(node.node_id)
            generation = previous.generation + 1 if previous else 1
            node.state = READY
            node.registered_at.FromDatetime(now)
            node.last_heartbeat_at.FromDatetime(now)
            node.lease_expires_at.FromDatetime(now + timedelta(seconds=self._ttl_s))
            event = _event(
                "registry.node.registered",
                node.node_id,
                events_pb2.NodeRegistered(
                    event_id=f"node-registered:{node.node_id}:{generation}:{self.epoch}",
                    node=node,
                ),
            )
            await self._store.upsert(node, generation, owner, event)
            self._entries[node.node_id] = NodeEntry(
                node, generation, time.monotonic() + self._ttl_s, owner=owner
            )
        self._notify()
        log.info(
            "node.registered",
            node_id=node.node_id,
            chip=node.chip,
            devices=len(node.devices),
            generation=generation,
        )
        return node

    async def heartbeat(
        self, node_id: str, sequence: int, statuses: list[registry_pb2.DeviceStatus]
    ) -> registry_pb2.Node:
        entry = self._entries.get(node_id)
        if entry is None:
            raise NotFound("node", node_id, "register it first")
        if entry.node.state != READY:
            state = registry_pb2.NodeState.Name(entry.node.state)
            raise FailedPrecondition(f"node '{node_id}' is {state}: register it again")
        if sequence <= entry.last_sequence:
            return entry.node  # a delayed duplicate: the lease was already extended past it
        for status in statuses:
            if status.index >= len(entry.node.devices):
                raise NotFound("device", f"{node_id}/{status.index}")
        entry.last_sequence = sequence
        now = _now()
        entry.lease_deadline = time.monotonic() + self._ttl_s
        entry.node.last_heartbeat_at.FromDatetime(now)
        entry.node.lease_expires_at.FromDatetime(now + timedelta(seconds=self._ttl_s))
        entry.dirty = True
        for status in statuses:
            device = entry.node.devices[status.index]
            if device.memory_used_bytes != status.memory_used_bytes:
                device.memory_used_bytes = status.memory_used_bytes
                entry.dirty_memory[status.index] = status.memory_used_bytes
            if status.health and (
                device.health != status.health or device.health_reason != status.health_reason
            ):
                device.health = status.health
                device.health_reason = status.health_reason
                event = _event(
                    "registry.device.health",
                    node_id,
                    events_pb2.DeviceHealthChanged(
                        event_id=f"device-health:{node_id}:{status.index}:{entry.generation}:"
                        f"{sequence}",
                        node_id=node_id,
                        device=device,
                    ),
                )
                await self._store.save_device(node_id, device, event)
                self._notify()
        return entry.node

    async def deregister(self, node_id: str, reason: str) -> None:
        entry = self._entries.get(node_id)
        if entry is None:
            raise NotFound("node", node_id)
        async with self._lock:
            entry.node.state = DOWN
            event = _event(
                "registry.node.deregistered",
                node_id,
                events_pb2.NodeDeregistered(
                    event_id=f"node-down:{node_id}:{entry.generation}",
                    node_id=node_id,
                    reason=reason,
                ),
            )
            audit = audit_record(
                "registry", "node.deregister", "node", node_id, detail=reason or entry.node.chip
            )
            await self._store.set_state(node_id, DOWN, event, audit)
        self._notify()

    # -- background work ----------------------------------------------------------------
    async def reap_expired(self) -> list[str]:
        """Mark READY nodes whose lease ran out LOST; returns their ids."""
        now = time.monotonic()
        lost = [
            e for e in self._entries.values() if e.node.state == READY and e.lease_deadline < now
        ]
        for entry in lost:
            async with self._lock:
                if entry.node.state != READY or entry.lease_deadline >= time.monotonic():
                    continue  # heartbeat or re-registration won the race
                entry.node.state = LOST
                event = _event(
                    "registry.node.lost",
                    entry.node.node_id,
                    events_pb2.NodeLost(
                        event_id=f"node-lost:{entry.node.node_id}:{entry.generation}",
                        node_id=entry.node.node_id,
                        chip=entry.node.chip,
                        last_heartbeat_at=entry.node.last_heartbeat_at,
                        lease_ttl_ms=self._config.lease_ttl_ms,
                    ),
                )
                await self._store.set_state(entry.node.node_id, LOST, event)
            log.warning("node.lost", node_id=entry.node.node_id, chip=entry.node.chip)
            self._notify()
        return [e.node.node_id for e in lost]

    async def flush_heartbeats(self) -> int:
        writes = []
        for entry in self._entries.values():
            if entry.dirty:
                writes.append(
                    HeartbeatWrite(
                        entry.node.node_id,
                        entry.node.last_heartbeat_at.ToDatetime(tzinfo=UTC),
                        entry.node.lease_expires_at.ToDatetime(tzinfo=UTC),
                        entry.dirty_memory,
                    )
                )
                entry.dirty = False
                entry.dirty_memory = {}
        if writes:
            await self._store.save_heartbeats(writes)
        return len(writes)

    async def run_reaper(self) -> None:
        interval = self._config.lease_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_expired()
            except Exception:
                log.exception("registry.reaper_failed")

    async def run_flusher(self) -> None:
        interval = self._config.heartbeat_flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_heartbeats()
            except Exception:
                log.exception("registry.flush_failed")


def _event(subject: str, node_id: str, message: Message) -> OutboxEvent:
    """The outbox entry for a node event; every event message has ``event_id``/``occurred_at``."""
    now = _now()
    getattr(message, "occurred_at").FromDatetime(now)  # noqa: B009
    event_id: str = getattr(message, "event_id")  # noqa: B009
    return OutboxEvent(subject, message, event_id, aggregate=f"node/{node_id}", at=now)


def healthy_device_count(node: registry_pb2.Node) -> int:
    return sum(1 for d in node.devices if d.health == common_pb2.DEVICE_HEALTH_HEALTHY)
