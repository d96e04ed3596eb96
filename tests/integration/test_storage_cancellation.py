"""A store operation whose caller is cancelled still commits, and dispose waits for it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from services.core.storage import Database, db_operation

pytestmark = pytest.mark.integration


class _Store:
    def __init__(self, db: Database) -> None:
        self._db = db

    @db_operation
    async def slow_insert(self, started: asyncio.Event) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            started.set()
            await asyncio.sleep(0.2)  # the caller is cancelled here
            await session.execute(text("INSERT INTO t VALUES (1)"))

    @db_operation
    async def count(self) -> int:
        async with self._db.session() as session:
            return int((await session.execute(text("SELECT count(*) FROM t"))).scalar_one())


async def test_cancelled_caller_does_not_cut_a_transaction(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    db = Database(url)
    started = asyncio.Event()
    caller = asyncio.create_task(_Store(db).slow_insert(started))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller  # the caller sees its cancellation at once
    await asyncio.wait_for(db.dispose(), timeout=5)  # waits for the write, does not hang

    reopened = Database(url)
    try:
        assert await _Store(reopened).count() == 1
    finally:
        await reopened.dispose()
