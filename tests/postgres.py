"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start on a free port.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` system user. Tests that need it skip, saying why, when no server binaries exist.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine.url import make_url

T = TypeVar("T")

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[list[str], int | None]:
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"], user.pw_uid


def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its database ``pocgrid`` (user ``pocgrid``, no
    password), and stops and removes it afterwards."""
    if not PG_BIN_DIRS or shutil.which("runuser") is None:
        why = "PostgreSQL server binaries not installed (make postgres installs them)"
        if os.environ.get("CI"):
            # CI must run the PostgreSQL half of the tests, not pass without it.
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    bindir = PG_BIN_DIRS[0]
    prefix, uid = _as_user()
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    tmp_path = Path(tempfile.mkdtemp(prefix="pocgrid-pg-"))
    data = tmp_path / "pgdata"
    data.mkdir()
    if uid is not None:
        os.chown(tmp_path, uid, -1)
        os.chown(data, uid, -1)
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "pocgrid",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    log = tmp_path / "pg.log"
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            # A throwaway server: durability is not worth the disk waits (each test makes
            # databases of its own); more connections than the default 100, as several
            # services of a test each keep a pool.
            f"-p {port} -k {tmp_path} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not become ready: " + log.read_text())
            time.sleep(0.1)
        subprocess.run(
            [
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "pocgrid",
                "pocgrid",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://pocgrid@127.0.0.1:{port}/pocgrid"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to the end from synchronous code, on an event loop of its own in a worker
    thread, so it works whether or not the calling thread's loop is running (fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


class PgTestDatabases:
    """Fresh databases for each test on one server shared by the session.

    Test number n gets the URL template ``.../t<n>_{name}`` (``POCGRID_DATABASE_URL``): each
    service it starts makes its own database ``t<n>_<service>`` on first use, as it would on an
    operator's server. A test's databases are dropped when the next test begins, not at its own
    teardown: its services may still be stopping then (fixtures are torn down in whatever order
    the test named them), and by the next test they are gone.

    ``template1``, which CREATE DATABASE copies, is first brought to every service's newest
    revision, so a service starting in a test finds its schema at head instead of running all of
    its revisions again (a copy takes ~0.1 s, the revisions ~0.5 s per service under load). The
    revisions themselves run on empty PostgreSQL databases in tests/integration/migrations
    (``empty``, a copy of ``template0``).
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._count = 0
        self._last_prefix = ""
        run_async(self._migrate_template())

    def _url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        url = make_url(self.server_url).set(drivername=driver, database=database)
        return url.render_as_string(hide_password=False)

    async def _migrate_template(self) -> None:
        # Imported here: only a session that uses PostgreSQL pays for importing every service.
        from services.adapter.migrations import MIGRATIONS as ADAPTER
        from services.agent.migrations import MIGRATIONS as AGENT
        from services.core.migrations import migrate
        from services.core.storage import Database
        from services.evaluator.migrations import MIGRATIONS as EVALUATOR
        from services.metering.migrations import MIGRATIONS as METERING
        from services.registry.migrations import MIGRATIONS as REGISTRY
        from services.scheduler.migrations import MIGRATIONS as SCHEDULER

        db = Database(self._url("template1"))
        try:
            for migrations in (ADAPTER, AGENT, EVALUATOR, METERING, REGISTRY, SCHEDULER):
                await migrate(db, migrations)
        finally:
            await db.dispose()

    def next_template(self) -> str:
        """The URL template for the next test (dropping the previous test's databases)."""
        run_async(self._drop(self._last_prefix))
        self._count += 1
        self._last_prefix = f"t{self._count}_"
        return self._url(self._last_prefix + "NAME").replace("NAME", "{name}")

    def empty(self, name: str) -> str:
        """A new database ``<this test's prefix><name>`` with no tables at all."""
        full = self._last_prefix + name

        async def create() -> None:
            conn = await asyncpg.connect(self._url("postgres", "postgresql"))
            try:
                await conn.execute(f'CREATE DATABASE "{full}" TEMPLATE template0')
            finally:
                await conn.close()

        run_async(create())
        return self._url(full)

    async def _drop(self, prefix: str) -> None:
        if not prefix:
            return
        conn = await asyncpg.connect(self._url("postgres", "postgresql"))
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix
            )
            for row in rows:
                # FORCE: a service a test forgot to stop must not keep its database alive.
                await conn.execute(f'DROP DATABASE "{row["datname"]}" WITH (FORCE)')
        finally:
            await conn.close()
