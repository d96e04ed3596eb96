"""Persistence of evaluations and tenants' scenarios (the evaluator's own database).

Every read takes the tenant: an evaluation id of another tenant is simply not found.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from pocgrid.v1 import evaluator_pb2
from services.core.outbox import Outbox, OutboxEvent
from services.core.storage import Database, db_operation
from services.evaluator.tables import OUTBOX, EvaluationRow, SampleSetRow, ScenarioRow

TERMINAL = (evaluator_pb2.EVALUATION_STATE_SUCCEEDED, evaluator_pb2.EVALUATION_STATE_FAILED)


def _load(row: EvaluationRow) -> evaluator_pb2.Evaluation:
    return evaluator_pb2.Evaluation.FromString(row.payload)


class EvaluationStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.outbox = Outbox(db, OUTBOX)

    @db_operation
    async def insert(self, evaluation: evaluator_pb2.Evaluation, idempotency_key: str) -> bool:
        """Store a new evaluation; False when the tenant's key is already taken."""
        now = datetime.now(UTC)
        try:
            async with self._db.session() as session, session.begin():
                session.add(
                    EvaluationRow(
                        evaluation_id=evaluation.evaluation_id,
                        tenant=evaluation.tenant,
                        idempotency_key=idempotency_key or None,
                        state=evaluation.state,
                        payload=evaluation.SerializeToString(),
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            if not idempotency_key:
                raise
            return False
        return True

    @db_operation
    async def save(self, evaluation: evaluator_pb2.Evaluation, *events: OutboxEvent) -> None:
        """Store the evaluation as it is now, with the events announcing its new state (one
        transaction: an event is published only for a state that was stored)."""
        async with self._db.session() as session, session.begin():
            await self.outbox.add(session, *events)
            await session.execute(
                update(EvaluationRow)
                .where(
                    EvaluationRow.evaluation_id == evaluation.evaluation_id,
                    EvaluationRow.tenant == evaluation.tenant,
                )
                .values(
                    state=evaluation.state,
                    payload=evaluation.SerializeToString(),
                    updated_at=datetime.now(UTC),
                )
            )

    @db_operation
    async def get(self, tenant: str, evaluation_id: str) -> evaluator_pb2.Evaluation | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(EvaluationRow).where(
                    EvaluationRow.tenant == tenant, EvaluationRow.evaluation_id == evaluation_id
                )
            )
            return None if row is None else _load(row)

    @db_operation
    async def find_by_key(self, tenant: str, key: str) -> evaluator_pb2.Evaluation | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(EvaluationRow).where(
                    EvaluationRow.tenant == tenant, EvaluationRow.idempotency_key == key
                )
            )
            return None if row is None else _load(row)

    @db_operation
    async def query(
        self, tenant: str, offset: int, limit: int
    ) -> tuple[list[evaluator_pb2.Evaluation], int]:
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count())
                .select_from(EvaluationRow)
                .where(EvaluationRow.tenant == tenant)
            )
            rows = await session.scalars(
                select(EvaluationRow)
                .where(EvaluationRow.tenant == tenant)
                .order_by(EvaluationRow.seq.desc())
                .offset(offset)
                .limit(limit)
            )
            return [_load(r) for r in rows], int(total or 0)

    @db_operation
    async def unfinished(self) -> list[evaluator_pb2.Evaluation]:
        """Evaluations a previous process left queued or running."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(EvaluationRow).where(EvaluationRow.state.not_in(TERMINAL))
            )
            return [_load(r) for r in rows]

    # -- tenants' scenarios ---------------------------------------------------------------------
    @db_operation
    async def put_scenario(self, tenant: str, scenario: evaluator_pb2.Scenario) -> bool:
        """Store the tenant's scenario; False when it already has one of that name."""
        try:
            async with self._db.session() as session, session.begin():
                session.add(
                    ScenarioRow(
                        tenant=tenant,
                        name=scenario.name,
                        payload=scenario.SerializeToString(),
                        created_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            return False
        return True

    @db_operation
    async def scenario(self, tenant: str, name: str) -> evaluator_pb2.Scenario | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(ScenarioRow).where(ScenarioRow.tenant == tenant, ScenarioRow.name == name)
            )
            return None if row is None else evaluator_pb2.Scenario.FromString(row.payload)

    @db_operation
    async def scenarios(self, tenant: str) -> list[evaluator_pb2.Scenario]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(ScenarioRow).where(ScenarioRow.tenant == tenant).order_by(ScenarioRow.seq)
            )
            return [evaluator_pb2.Scenario.FromString(r.payload) for r in rows]

    # -- tenants' sample sets -------------------------------------------------------------------
    @db_operation
    async def put_sample_set(
        self, tenant: str, set_id: str, name: str, count: int, sha256: str, payload: bytes
    ) -> bool:
        """Store the tenant's samples; False when it already has these (the same id)."""
        try:
            async with self._db.session() as session, session.begin():
                session.add(
                    SampleSetRow(
                        tenant=tenant,
                        sample_set_id=set_id,
                        name=name,
                        count=count,
                        sha256=sha256,
                        payload=payload,
                        created_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            return False
        return True

    @db_operation
    async def sample_set(self, tenant: str, set_id: str) -> SampleSetRow | None:
        async with self._db.session() as session:
            row: SampleSetRow | None = await session.scalar(
                select(SampleSetRow).where(
                    SampleSetRow.tenant == tenant, SampleSetRow.sample_set_id == set_id
                )
            )
            return row
