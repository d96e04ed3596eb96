"""Persistence of nodes and devices (the registry's own database).

A write that changes what other services are told about (registration, state, device health)
takes the event that announces it and writes it to the outbox in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Table, bindparam, select, update

from pocgrid.v1 import admin_pb2, common_pb2, registry_pb2
from services.core.outbox import Outbox, OutboxEvent
from services.core.storage import Database, db_operation, utc
from services.registry.keys import insert_audit
from services.registry.tables import OUTBOX, DeviceRow, NodeRow


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(slots=True)
class HeartbeatWrite:
    node_id: str
    last_heartbeat_at: datetime
    lease_expires_at: datetime
    memory_used: dict[int, int]


_NODES = cast(Table, NodeRow.__table__)
_DEVICES = cast(Table, DeviceRow.__table__)
_UPDATE_NODE_LEASE = (
    update(_NODES)
    .where(_NODES.c.node_id == bindparam("b_node"))
    .values(last_heartbeat_at=bindparam("b_seen"), lease_expires_at=bindparam("b_until"))
)
_UPDATE_DEVICE_MEMORY = (
    update(_DEVICES)
    .where(_DEVICES.c.node_id == bindparam("b_node"), _DEVICES.c.index == bindparam("b_index"))
    .values(memory_used_bytes=bindparam("b_used"))
)


class NodeStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = Outbox(db, OUTBOX)

    @db_operation
    async def load(self) -> list[tuple[registry_pb2.Node, int, str]]:
        """Every node with its generation and holder."""
        async with self._db.session() as session:
            rows = (await session.scalars(select(NodeRow))).all()
            return [(_row_to_node(row), row.generation, row.owner) for row in rows]

    @db_operation
    async def upsert(
        self, node: registry_pb2.Node, generation: int, owner: str, event: OutboxEvent
    ) -> None:
        async with self._db.session() as session, session.begin():
            existing = await session.get(NodeRow, node.node_id)
            if existing is not None:
                await session.delete(existing)
                await session.flush()
            session.add(_node_to_row(node, generation, owner))
            await self.outbox.add(session, event)

    @db_operation
    async def set_state(
        self,
        node_id: str,
        state: int,
        event: OutboxEvent,
        audit: admin_pb2.AuditEvent | None = None,
    ) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(NodeRow).where(NodeRow.node_id == node_id).values(state=state)
            )
            await self.outbox.add(session, event)
            if audit is not None:
                await insert_audit(session, audit)

    @db_operation
    async def save_device(
        self, node_id: str, device: registry_pb2.Device, event: OutboxEvent
    ) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(DeviceRow)
                .where(DeviceRow.node_id == node_id, DeviceRow.index == device.index)
                .values(
                    health=device.health,
                    health_reason=device.health_reason,
                    memory_used_bytes=device.memory_used_bytes,
                )
            )
            await self.outbox.add(session, event)

    @db_operation
    async def save_heartbeats(self, writes: Iterable[HeartbeatWrite]) -> None:
        # One executemany per table rather than a statement per row (1,000 nodes x 8 devices
        # flush every second at fleet scale). Core statements on the tables: a node removed
        # meanwhile simply matches no row.
        nodes: list[dict[str, Any]] = []
        devices: list[dict[str, Any]] = []
        for w in writes:
            nodes.append(
                {"b_node": w.node_id, "b_seen": w.last_heartbeat_at, "b_until": w.lease_expires_at}
            )
            devices.extend(
                {"b_node": w.node_id, "b_index": index, "b_used": used}
                for index, used in w.memory_used.items()
            )
        if not nodes:
            return
        async with self._db.session() as session, session.begin():
            await session.execute(_UPDATE_NODE_LEASE, nodes)
            if devices:
                await session.execute(_UPDATE_DEVICE_MEMORY, devices)


def _node_to_row(node: registry_pb2.Node, generation: int, owner: str) -> NodeRow:
    return NodeRow(
        node_id=node.node_id,
        chip=node.chip,
        vendor_family=node.vendor_family,
        agent_address=node.agent_address,
        state=node.state,
        labels=dict(node.labels),
        runtime_name=node.runtime_name,
        runtime_version=node.runtime_version,
        collective_library=node.collective_library,
        hostname=node.hostname,
        generation=generation,
        owner=owner,
        registered_at=to_datetime(node.registered_at),
        last_heartbeat_at=to_datetime(node.last_heartbeat_at),
        lease_expires_at=to_datetime(node.lease_expires_at),
        devices=[
            DeviceRow(
                index=d.index,
                device_id=d.device_id,
                uuid=d.uuid,
                chip=d.chip,
                memory_total_bytes=d.memory_total_bytes,
                memory_used_bytes=d.memory_used_bytes,
                compute_units=d.compute_units,
                precisions=list(d.precisions),
                health=d.health,
                health_reason=d.health_reason,
            )
            for d in node.devices
        ],
    )


def _row_to_node(row: NodeRow) -> registry_pb2.Node:
    node = registry_pb2.Node(
        node_id=row.node_id,
        chip=row.chip,
        vendor_family=row.vendor_family,
        agent_address=row.agent_address,
        state=registry_pb2.NodeState.ValueType(row.state),
        labels=row.labels or {},
        runtime_name=row.runtime_name,
        runtime_version=row.runtime_version,
        collective_library=row.collective_library,
        hostname=row.hostname,
    )
    node.registered_at.FromDatetime(utc(row.registered_at))
    node.last_heartbeat_at.FromDatetime(utc(row.last_heartbeat_at))
    node.lease_expires_at.FromDatetime(utc(row.lease_expires_at))
    for d in row.devices:
        node.devices.add(
            device_id=d.device_id,
            uuid=d.uuid,
            index=d.index,
            chip=d.chip,
            memory_total_bytes=d.memory_total_bytes,
            memory_used_bytes=d.memory_used_bytes,
            compute_units=d.compute_units,
            precisions=d.precisions,
            health=common_pb2.DeviceHealth.ValueType(d.health),
            health_reason=d.health_reason,
        )
    return node
