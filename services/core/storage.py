"""SQLAlchemy 2 async storage: SQLite file by default (embedded), PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

T = TypeVar("T")
P = ParamSpec("P")


def utc(dt: datetime) -> datetime:
    """A datetime read from a ``DateTime(timezone=True)`` column, as an aware UTC datetime.

    SQLite hands back naive datetimes even for timezone=True columns (PostgreSQL does not).
    """
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._in_flight: set[asyncio.Task[Any]] = set()
        # SQLite has one writer at a time; transactions from several pooled connections would
        # wait on its file lock (busy_timeout) and fail with "database is locked" under load.
        # Taking turns here keeps the waiting in the event loop. PostgreSQL needs no gate.
        self._gate: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None

    async def complete(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to the end even if the caller is cancelled.

        A client hanging up mid-RPC, or a service cancelling its loops at stop, would otherwise
        interrupt a transaction half-way; SQLAlchemy then cleans the connection up in a task of
        its own, and disposing the engine under that task leaves it waiting forever. The caller
        still sees its cancellation at once; ``dispose`` waits for what is in flight.
        """
        task = asyncio.ensure_future(self._take_turn(work) if self._gate else work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def create_schema(self, base: type[DeclarativeBase]) -> None:
        """Create missing tables without migrations (scratch databases in tests only; a
        service's database is brought up to date by ``services.core.migrations.migrate``)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(base.metadata.create_all)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def _take_turn(self, work: Coroutine[Any, Any, T]) -> T:
        assert self._gate is not None
        async with self._gate:
            return await work

    async def dispose(self, timeout_s: float = 10.0) -> None:
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout_s)
        await self.engine.dispose()


#: PostgreSQL's bound on a database name (NAMEDATALEN - 1 bytes); a longer one would be cut.
PG_MAX_NAME_BYTES = 63


async def create_database_if_missing(url: str) -> None:
    """Create the PostgreSQL database ``url`` names when the server has none by that name.

    Connects to the server's ``postgres`` database with the same credentials. Several processes
    may race to create one database (agents scaled at once): the loser finds it there and goes
    on. SQLite makes its file on first connect, so there is nothing to do for it.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    name = parsed.database
    if len(name.encode()) > PG_MAX_NAME_BYTES:
        raise ValueError(f"database name {name!r}: longer than {PG_MAX_NAME_BYTES} bytes")
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    exists = text("SELECT 1 FROM pg_database WHERE datname = :name")
    try:
        async with admin.connect() as conn:
            if (await conn.execute(exists, {"name": name})).first() is not None:
                return
            quoted = conn.dialect.identifier_preparer.quote_identifier(name)
            try:
                await conn.execute(text(f"CREATE DATABASE {quoted}"))
            except DBAPIError:
                if (await conn.execute(exists, {"name": name})).first() is None:
                    raise
    finally:
        await admin.dispose()


class _HasDatabase(Protocol):
    _db: Database


S = TypeVar("S", bound=_HasDatabase)


def db_operation(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Marks a store method that uses the database: it runs under ``Database.complete``."""

    async def run(store: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async def work() -> T:
            return await method(store, *args, **kwargs)

        return await store._db.complete(work())

    functools.update_wrapper(run, method)
    return run


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed during the heartbeat writes; busy_timeout rides out short locks.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
