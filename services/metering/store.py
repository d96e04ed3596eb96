"""Persistence and queries of usage records (metering's own database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from pocgrid.v1 import metering_pb2
from services.core.storage import Database, db_operation, utc
from services.core.usage import AMOUNT_FIELDS, RECORD_SCALARS, RECORD_TIMES, copy_fields
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
        # Columns are named as the record's fields (tests/unit/metering checks it).
        values: dict[str, Any] = {name: getattr(record, name) for name in RECORD_SCALARS}
        for name in RECORD_TIMES:
            values[name] = getattr(record, name).ToDatetime(tzinfo=UTC)
        values["recorded_at"] = datetime.now(UTC)
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
        sums = [func.coalesce(func.sum(getattr(UsageRow, name)), 0) for name in AMOUNT_FIELDS]
        query = (
            select(UsageRow.chip, func.count(), *sums)
            .where(*where.where())
            .group_by(UsageRow.chip)
            .order_by(UsageRow.chip)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        out: list[metering_pb2.ChipUsage] = []
        for chip, count, *amounts in rows:
            usage = metering_pb2.ChipUsage(chip=chip, records=int(count))
            for name, value in zip(AMOUNT_FIELDS, amounts, strict=True):
                # The field's own type: SQL sums of integers may come back as Decimal.
                setattr(usage, name, type(getattr(usage, name))(value))
            out.append(usage)
        return out


def _row_to_record(row: UsageRow) -> metering_pb2.UsageRecord:
    record = metering_pb2.UsageRecord()
    copy_fields(row, record, RECORD_SCALARS)
    for name in RECORD_TIMES:
        getattr(record, name).FromDatetime(utc(getattr(row, name)))
    return record
