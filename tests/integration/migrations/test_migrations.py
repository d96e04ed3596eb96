"""Schema migrations on SQLite and a real PostgreSQL: a database made by release 0.1.0's
``create_all`` (no version table) is upgraded in place and keeps its rows; a new one is built
by the revisions alone; either way the result is exactly what the current tables describe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, Table
from sqlalchemy.orm import DeclarativeBase

from pocgrid.v1 import events_pb2
from services.adapter.migrations import MIGRATIONS as ADAPTER
from services.agent.migrations import MIGRATIONS as AGENT
from services.core.migrations import BASELINE, MigrationError, Migrations, current_revision, migrate
from services.core.storage import Database
from services.evaluator.migrations import MIGRATIONS as EVALUATOR
from services.metering.migrations import MIGRATIONS as METERING
from services.metering.store import UsageFilter, UsageStore
from services.registry.migrations import MIGRATIONS as REGISTRY
from services.registry.store import NodeStore
from services.scheduler.migrations import MIGRATIONS as SCHEDULER
from services.scheduler.store import JobStore
from tests.integration.migrations import release_0_1_0 as old

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def db_url(fresh_database: Callable[[str], str]) -> str:
    """A new, empty database on each backend (conftest's ``database_url``)."""
    return fresh_database("service")


async def _create_old(db: Database, base: type[DeclarativeBase]) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(base.metadata.create_all)


def _drift(conn: Connection, migrations: Migrations, others: MetaData) -> list[object]:
    context = MigrationContext.configure(
        conn,
        opts={
            "version_table": migrations.version_table,
            # Tables of other services sharing the database are not this one's drift.
            "include_name": lambda name, kind, _parent: (
                kind != "table"
                or name in migrations.metadata.tables
                or not (name in others.tables or name.endswith("_alembic_version"))
            ),
        },
    )
    return list(compare_metadata(context, migrations.metadata))


async def _assert_matches_head(
    db: Database, migrations: Migrations, others: MetaData | None = None
) -> None:
    assert await current_revision(db, migrations) == migrations.head()
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_drift, migrations, others or MetaData()) == []


async def test_scheduler_0_1_0_database_is_upgraded_in_place(db_url):
    db = Database(db_url)
    try:
        await _create_old(db, old.SchedulerBase)
        event = events_pb2.JobStateChanged(event_id="job:job-1:queued", job_id="job-1")
        async with db.session() as session, session.begin():
            session.add(
                old.JobRow(
                    job_id="job-1",
                    tenant="acme",
                    idempotency_key="k1",
                    model="Qwen2.5-7B",
                    chip="ascend-910b2",
                    devices=2,
                    precision=2,
                    priority=10,
                    display_name="old job",
                    state=1,
                    state_reason="waiting",
                    created_at=T0,
                    updated_at=T0,
                )
            )
            # One event published before the upgrade, one still waiting for NATS.
            for published in (T0, None):
                session.add(
                    old.OutboxRow(
                        event_id=event.event_id,
                        subject="scheduler.job.queued",
                        payload=event.SerializeToString(),
                        trace_headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
                        created_at=T0,
                        published_at=published,
                    )
                )

        await migrate(db, SCHEDULER)

        await _assert_matches_head(db, SCHEDULER)
        store = JobStore(db)
        job = await store.get("acme", "job-1")
        assert job is not None and job.spec.devices == 2 and job.spec.display_name == "old job"
        assert job.created_at.ToDatetime(tzinfo=UTC) == T0
        assert (await store.find_by_key("acme", "k1")) == job
        pending = await store.outbox.pending()
        assert [(p.event_id, p.aggregate, p.event_type) for p in pending] == [
            ("job:job-1:queued", "job/job-1", "pocgrid.v1.JobStateChanged")
        ]
        assert pending[0].decode() == event and "traceparent" in pending[0].headers
        # Running it again (every start-up does) changes nothing.
        await migrate(db, SCHEDULER)
        assert (await store.get("acme", "job-1")) == job
    finally:
        await db.dispose()


async def test_registry_0_1_0_database_is_upgraded_in_place(db_url):
    db = Database(db_url)
    try:
        await _create_old(db, old.RegistryBase)
        async with db.session() as session, session.begin():
            session.add(
                old.NodeRow(
                    node_id="n1",
                    chip="ascend-910b2",
                    vendor_family="ascend",
                    agent_address="127.0.0.1:1",
                    state=1,
                    labels={"rack": "a"},
                    generation=3,
                    registered_at=T0,
                    last_heartbeat_at=T0,
                    lease_expires_at=T0,
                    devices=[
                        old.DeviceRow(
                            index=0,
                            device_id="npu:0",
                            uuid="u0",
                            chip="ascend-910b2",
                            memory_total_bytes=64 << 30,
                            memory_used_bytes=1 << 30,
                            precisions=[1, 2],
                            health=1,
                        )
                    ],
                )
            )

        await migrate(db, REGISTRY)

        await _assert_matches_head(db, REGISTRY)
        [(node, generation, owner)] = await NodeStore(db).load()
        assert generation == 3 and node.labels == {"rack": "a"}
        assert owner == ""  # no agent holds a 0.1.0 node until its next registration
        assert node.devices[0].memory_used_bytes == 1 << 30
        assert node.lease_expires_at.ToDatetime(tzinfo=UTC) == T0
        assert await NodeStore(db).outbox.count_pending() == 0
    finally:
        await db.dispose()


async def test_metering_0_1_0_database_is_upgraded_in_place(db_url):
    db = Database(db_url)
    try:
        await _create_old(db, old.MeteringBase)
        async with db.session() as session, session.begin():
            session.add(
                old.UsageRow(
                    usage_id="u1",
                    tenant="acme",
                    chip="ascend-910b2",
                    tokens_out=42,
                    busy_device_seconds=1.5,
                    started_at=T0,
                    ended_at=T0,
                    recorded_at=T0,
                )
            )

        await migrate(db, METERING)

        await _assert_matches_head(db, METERING)
        records, total = await UsageStore(db).query(UsageFilter("acme"), 0, 10)
        # The float seconds became whole microseconds, exactly.
        assert total == 1 and records[0].tokens_out == 42
        assert records[0].busy_device_us == 1_500_000 and records[0].devices == 1
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    "migrations",
    [SCHEDULER, REGISTRY, METERING, ADAPTER, AGENT, EVALUATOR],
    ids=lambda m: m.package,
)
async def test_a_new_database_is_built_by_the_revisions(db_url, migrations):
    db = Database(db_url)
    try:
        assert await migrate(db, migrations) == migrations.head()
        await _assert_matches_head(db, migrations)
    finally:
        await db.dispose()


async def test_replicas_started_together_on_a_new_database_migrate_it_once(db_url):
    # Three metering replicas scaled at once: without the migration lock each saw no version
    # table and created the schema, and all but one failed (duplicate table or type).
    replicas = [Database(db_url) for _ in range(3)]
    try:
        revisions = await asyncio.gather(*(migrate(db, METERING) for db in replicas))
        assert revisions == [METERING.head()] * 3
        await _assert_matches_head(replicas[0], METERING)
    finally:
        await asyncio.gather(*(db.dispose() for db in replicas))


async def test_services_can_share_one_database(db_url):
    # Each service keeps its own version table and outbox, so one PostgreSQL database may
    # hold them all (as tests/integration/test_postgres_storage.py does).
    everything = MetaData()
    for m in (SCHEDULER, REGISTRY, METERING, ADAPTER, EVALUATOR):
        for table in m.metadata.tables.values():
            table.to_metadata(everything)
    db = Database(db_url)
    try:
        for m in (SCHEDULER, REGISTRY, METERING, ADAPTER, EVALUATOR):
            await migrate(db, m)
        for m in (SCHEDULER, REGISTRY, METERING, ADAPTER, EVALUATOR):
            await _assert_matches_head(db, m, everything)
    finally:
        await db.dispose()


async def test_a_partial_old_database_is_refused(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'partial.db'}")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(cast(Table, old.JobRow.__table__).create)  # jobs, no outbox
        with pytest.raises(MigrationError, match="job_events_outbox"):
            await migrate(db, SCHEDULER)
    finally:
        await db.dispose()


def test_every_history_starts_at_the_baseline():
    for migrations in (SCHEDULER, REGISTRY, METERING, ADAPTER, AGENT, EVALUATOR):
        assert migrations.script().get_base() == BASELINE
