"""Schema migrations (Alembic) for each service's own database, run at start-up.

Each service that stores anything has a ``migrations`` package next to its tables, holding
Alembic revision scripts in ``versions/``. There is no ``alembic.ini`` and no ``env.py``: this
module drives Alembic programmatically, so the revisions travel as ordinary Python modules of
the installed package and nothing but the database URL is needed at run time.

A database made by release 0.1.0 carries no version table (it was made by
``create_all``). When its tables are there, it is stamped at the baseline revision, which
describes exactly that schema, and then upgraded like any other database. How to add a revision
is written down in ``docs/migrations.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import os
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

from services.core.logging import get_logger
from services.core.storage import Database

log = get_logger()

#: The revision every service's history starts with: the schema release 0.1.0 made.
BASELINE = "0001"


class MigrationError(RuntimeError):
    """A database cannot be brought to the schema this release expects."""


@dataclass(frozen=True, slots=True)
class Migrations:
    """One service's schema history."""

    package: str
    """Dotted name of the package whose ``versions/`` folder holds the revision scripts."""

    metadata: MetaData
    """The tables the head revision must match (checked by the migration tests)."""

    baseline_tables: tuple[str, ...]
    """Tables of release 0.1.0: a database with all of them and no version is stamped at the
    baseline; one with only some of them is refused rather than guessed at."""

    version_table: str
    """Where the revision is recorded, one per service (``<service>_alembic_version``), so
    services sharing one PostgreSQL database keep separate histories."""

    @property
    def script_location(self) -> Path:
        module = importlib.import_module(self.package)
        assert module.__file__ is not None
        return Path(module.__file__).parent

    def script(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self.config())

    def config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        return config

    def head(self) -> str:
        head = self.script().get_current_head()
        assert head is not None, f"{self.package} has no revisions"
        return head


async def migrate(db: Database, migrations: Migrations, target: str = "heads") -> str:
    """Bring ``db`` to ``target`` (default: the newest revision); returns the revision it is at.

    Replicas of a service started together on one new database would each see no version
    table and each create the schema (the second fails: "duplicate key ... pg_type"), so the
    upgrade runs under a lock per service: one replica migrates, the others then find the
    head and do nothing."""
    async with _migration_lock(db, migrations), db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held to the end of this transaction, which is the whole upgrade's.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": zlib.crc32(migrations.version_table.encode())},
            )
        return await conn.run_sync(_upgrade, migrations, target)


@contextlib.asynccontextmanager
async def _migration_lock(db: Database, migrations: Migrations) -> AsyncIterator[None]:
    """On a SQLite file, an exclusive lock on a file beside it: pysqlite runs DDL outside any
    transaction, so the database's own locks cannot serialize two replicas' upgrades."""
    path = db.engine.url.database if db.is_sqlite else None
    if not path or path == ":memory:":
        yield
        return
    lock = await asyncio.to_thread(
        os.open, f"{path}.{migrations.version_table}.lock", os.O_CREAT | os.O_RDWR, 0o600
    )
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # releases the lock


async def current_revision(db: Database, migrations: Migrations) -> str | None:
    opts = {"version_table": migrations.version_table}
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: MigrationContext.configure(c, opts=opts).get_current_revision()
        )


def _upgrade(conn: Connection, migrations: Migrations, target: str) -> str:
    script = migrations.script()
    context = MigrationContext.configure(conn, opts={"version_table": migrations.version_table})
    before = context.get_current_revision()
    if before is None:
        present = [t for t in migrations.baseline_tables if inspect(conn).has_table(t)]
        if present and len(present) < len(migrations.baseline_tables):
            missing = sorted(set(migrations.baseline_tables) - set(present))
            raise MigrationError(
                f"{conn.engine.url.render_as_string()}: has tables {sorted(present)} but not "
                f"{missing}, and no {migrations.version_table}: not a pocgrid database this "
                "release can upgrade"
            )
        if present:
            # Made by release 0.1.0's create_all: that schema is the baseline revision.
            context.stamp(script, BASELINE)
            log.info("db.stamped_baseline", package=migrations.package, revision=BASELINE)
    with EnvironmentContext(
        migrations.config(),
        script,
        fn=lambda rev, _ctx: script._upgrade_revs(target, rev),
        destination_rev=target,
    ) as env:
        env.configure(
            connection=conn,
            target_metadata=migrations.metadata,
            version_table=migrations.version_table,
        )
        with env.begin_transaction():
            env.run_migrations()
    after = MigrationContext.configure(
        conn, opts={"version_table": migrations.version_table}
    ).get_current_revision()
    if after != before:
        log.info("db.migrated", package=migrations.package, before=before, after=after)
    return after or ""


def create_outbox_table_v1(name: str) -> None:
    """In a revision script: create the outbox table as ``services.core.outbox`` defines it now.

    Revisions are history and must not change when the code does: this function is frozen. A
    later change to the outbox table gets a function of its own (``..._v2``) and a revision in
    every service that has an outbox.
    """
    import sqlalchemy as sa
    from alembic import op

    op.create_table(
        name,
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("aggregate", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index(f"ix_{name}_event_id", name, ["event_id"], unique=False)
    op.create_index(f"ix_{name}_published_at", name, ["published_at"], unique=False)
