"""Persistence of imported models and plans (the adapter's own database)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.adapter.tables import ImportedModelRow, PlanRow
from services.core.storage import Database, db_operation


class AdapterStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @db_operation
    async def put_model(self, row: ImportedModelRow) -> tuple[ImportedModelRow, bool]:
        """Store ``row``; (the stored row, True) when new, (the existing row, False) when the
        tenant had imported the same content before."""
        row.created_at = datetime.now(UTC)
        try:
            async with self._db.session() as session, session.begin():
                session.add(row)
            return row, True
        except IntegrityError:
            async with self._db.session() as session:
                existing = await session.get(ImportedModelRow, (row.tenant, row.model_id))
                assert existing is not None
                return existing, False

    @db_operation
    async def get_model(self, tenant: str, model_id: str) -> ImportedModelRow | None:
        async with self._db.session() as session:
            return await session.get(ImportedModelRow, (tenant, model_id))

    @db_operation
    async def list_models(self, tenant: str) -> Sequence[ImportedModelRow]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(ImportedModelRow)
                .where(ImportedModelRow.tenant == tenant)
                .order_by(ImportedModelRow.created_at, ImportedModelRow.model_id)
            )
            return list(rows)

    @db_operation
    async def get_plan(self, cache_key: str) -> bytes | None:
        async with self._db.session() as session:
            row = await session.get(PlanRow, cache_key)
            return None if row is None else row.response

    @db_operation
    async def put_plan(
        self, cache_key: str, model_hash: str, chip: str, options: str, response: bytes
    ) -> None:
        row = PlanRow(
            cache_key=cache_key,
            model_hash=model_hash,
            chip=chip,
            options=options[:1024],
            response=response,
            created_at=datetime.now(UTC),
        )
        try:
            async with self._db.session() as session, session.begin():
                session.add(row)
        except IntegrityError:
            pass  # computed twice at once: the same plan is already stored
