"""Persistence and queries of usage records (metering's own database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from pocgrid.v1 import metering_pb2
from services.core.storage import Database, db_operation, utc
from services.metering.tables import UsageRow


@dataclass(frozen=True, slots=True)
class UsageFilter:
    tenant: str
    job_id: str = ""
    chip: str = ""
    since: datetime | None = None
    """Records that ended at or after this."""
    until: datetime | None = None
    """Records that ended before this."""

    def where(self) -> list[Any]:
        clauses: list[Any] = [UsageRow.tenant == self.tenant]
        if self.job_id:
            clauses.append(UsageRow.job_id == self.job_id)
        if self.chip:
            clauses.append(UsageRow.chip == self.chip)
        if self.since is not None:
            clauses.append(UsageRow.ended_at >= self.since)
        if self.until is not None:
            clauses.append(UsageRow.ended_at < self.until)
        return clauses


class UsageStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @db_operation
    async def record(self, record: metering_pb2.UsageRecord) -> bool:
        """Store a record once; False when its usage_id is already stored (a redelivery)."""
        values = {
            "usage_id": record.usage_id,
            "tenant": record.tenant,
            "node_id": record.node_id,
            "chip": record.chip,
            "job_id": record.job_id,
            "model": record.model,
            "tokens_in": record.tokens_in,
            "tokens_out": record.tokens_out,
            "samples": record.samples,
            "busy_device_seconds": record.busy_device_seconds,
            "memory_gib_seconds": record.memory_gib_seconds,
            "started_at": record.started_at.ToDatetime(tzinfo=UTC),
            "ended_at": record.ended_at.ToDatetime(tzinfo=UTC),
            "recorded_at": datetime.now(UTC),
        }
        # INSERT ... ON CONFLICT DO NOTHING: one statement, no read-then-write race between
        # two replicas consuming the same redelivered event.
        dialect = postgresql if self._db.engine.dialect.name == "postgresql" else sqlite
        stmt = (
            dialect.insert(UsageRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["usage_id"])
        )
        async with self._db.session() as session, session.begin():
            result = await session.execute(stmt)
        return bool(getattr(result, "rowcount", 0))

    @db_operation
    async def query(
        self, where: UsageFilter, offset: int, limit: int
    ) -> tuple[list[metering_pb2.UsageRecord], int]:
        clauses = where.where()
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(UsageRow).where(*clauses))
            rows = await session.scalars(
                select(UsageRow)
                .where(*clauses)
                .order_by(UsageRow.ended_at, UsageRow.usage_id)
                .offset(offset)
                .limit(limit)
            )
            return [_row_to_record(r) for r in rows], int(total or 0)

    @db_operation
    async def summary(self, where: UsageFilter) -> list[metering_pb2.ChipUsage]:
        query = (
            select(
                UsageRow.chip,
                func.count(),
                func.coalesce(func.sum(UsageRow.tokens_in), 0),
                func.coalesce(func.sum(UsageRow.tokens_out), 0),
                func.coalesce(func.sum(UsageRow.samples), 0),
                func.coalesce(func.sum(UsageRow.busy_device_seconds), 0.0),
                func.coalesce(func.sum(UsageRow.memory_gib_seconds), 0.0),
            )
            .where(*where.where())
            .group_by(UsageRow.chip)
            .order_by(UsageRow.chip)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        return [
            metering_pb2.ChipUsage(
                chip=chip,
                records=int(count),
                tokens_in=int(tokens_in),
                tokens_out=int(tokens_out),
                samples=int(samples),
                busy_device_seconds=float(busy),
                memory_gib_seconds=float(memory),
            )
            for chip, count, tokens_in, tokens_out, samples, busy, memory in rows
        ]


def _row_to_record(row: UsageRow) -> metering_pb2.UsageRecord:
    record = metering_pb2.UsageRecord(
        usage_id=row.usage_id,
        tenant=row.tenant,
        node_id=row.node_id,
        chip=row.chip,
        job_id=row.job_id,
        model=row.model,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        samples=row.samples,
        busy_device_seconds=row.busy_device_seconds,
        memory_gib_seconds=row.memory_gib_seconds,
    )
    record.started_at.FromDatetime(utc(row.started_at))
    record.ended_at.FromDatetime(utc(row.ended_at))
    return record
