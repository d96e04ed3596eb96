"""Shared fixtures: a real nats-server per test on a random port, each database-touching test on
SQLite and on a real PostgreSQL server, in-memory span capture, the mesh's identity keys (one set
per test session) and channels that sign as a mesh identity.

Every service port wants a signed service token (services/core/service_tokens.py). A test that
calls a service directly opens its channel with ``service_channel(address, identity=...)``: the
tenant and admin role it names in ``x-pocgrid-tenant`` / ``x-pocgrid-role`` metadata become the
claims of that identity's token. The identity matters: agents take work from ``scheduler`` or
``evaluator``, node leases come from ``agent`` (services/core/mesh_policy.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devmesh.nats_server import NatsServer
from services.core import mesh_identity
from services.core.config import CommonConfig
from services.core.mesh_auth import MeshCredentials
from services.core.mesh_channel import signed_aio_channel, signed_channel
from tests.otlp import Receiver, start_receiver
from tests.postgres import PgTestDatabases, postgres_server
from tools.shared_data import SharedDataMissing, shared_path

#: The backends every test that stores anything runs on: both in CI. POCGRID_TEST_DB=sqlite (or
#: =postgresql) narrows a run to one while developing.
BACKENDS = [b for b in os.environ.get("POCGRID_TEST_DB", "sqlite,postgresql").split(",") if b]
if not set(BACKENDS) <= {"sqlite", "postgresql"} or not BACKENDS:
    raise ValueError(f"POCGRID_TEST_DB={BACKENDS}: sqlite and/or postgresql, comma-separated")


def require_shared(*parts: str) -> Path:
    """``shared/<parts>``; a test that needs it fails (never skips) when it is missing."""
    try:
        return shared_path(*parts)
    except SharedDataMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def shared_catalog() -> Path:
    """shared/data/catalog: the public chip and model CSVs the catalogue is built from."""
    return require_shared("data", "catalog", "chips.csv").parent


@pytest.fixture
def shared_reference() -> Path:
    """shared/data/reference: the public measurements the performance model is checked on."""
    return require_shared("data", "reference")


_mesh_keys: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def mesh_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's mesh key directory: every identity's key pair."""
    directory = tmp_path_factory.mktemp("mesh-keys")
    # And two agents with identities of their own (test_mesh_security's agent-key theft).
    mesh_identity.generate(directory, [*mesh_identity.IDENTITIES, "agent-a", "agent-b"])
    _mesh_keys[:] = [directory]
    return directory


def mesh_credentials(identity: str = "gateway") -> MeshCredentials:
    """``identity``'s credentials from the session's keys (the autouse ``mesh_keys`` made them)."""
    assert _mesh_keys, "the mesh_keys fixture has not run"
    return MeshCredentials.from_dir(_mesh_keys[0], identity)


def service_channel(address: str, identity: str = "gateway") -> grpc.aio.Channel:
    """A grpc.aio channel to a service port whose calls are signed as ``identity``."""
    return signed_aio_channel(address, mesh_credentials(identity).signer)


def service_channel_sync(address: str, identity: str = "gateway") -> grpc.Channel:
    """The blocking counterpart of ``service_channel``."""
    return signed_channel(address, mesh_credentials(identity).signer)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """One throwaway PostgreSQL server for the whole session, started when a test first needs
    it (initdb and start cost a few seconds; a database per test costs milliseconds)."""
    yield from postgres_server()


@pytest.fixture(scope="session")
def pg_databases(pg_server: str) -> PgTestDatabases:
    return PgTestDatabases(pg_server)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """``POCGRID_DATABASE_URL`` for the test's services: "" (SQLite files in data_dir), or a
    ``{name}`` template for fresh databases on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return ""
    databases: PgTestDatabases = request.getfixturevalue("pg_databases")
    return databases.next_template()


@pytest.fixture
def common(
    tmp_path: Path, nats_server: NatsServer, mesh_keys: Path, database_url: str
) -> CommonConfig:
    return CommonConfig(
        listen="127.0.0.1:0",
        nats_url=nats_server.url,
        data_dir=tmp_path / "data",
        database_url=database_url,
        log_format="console",
        shutdown_grace_s=0.5,
        outbox_sweep_ms=100,
        mesh_keys_dir=str(mesh_keys),
    )


@pytest.fixture
def fresh_database(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> Callable[[str], str]:
    """``fresh_database(name)``: the URL of a new database ``name`` without any tables, on the
    test's backend, for tests that open a ``Database`` and migrate it themselves."""

    def make(name: str) -> str:
        if not database_url:
            return f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}"
        databases: PgTestDatabases = request.getfixturevalue("pg_databases")
        return databases.empty(name)

    return make


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def span_processor(spans: InMemorySpanExporter) -> SimpleSpanProcessor:
    return SimpleSpanProcessor(spans)


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    within: float = 10.0,
    every: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll until ``predicate`` is true; fails the test with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


@pytest.fixture
def waiter() -> Callable[..., Awaitable[None]]:
    return wait_for


async def aclose_all(items: list[Any]) -> None:
    for item in reversed(items):
        await item.stop()


@pytest.fixture
async def closer() -> AsyncIterator[list[Any]]:
    items: list[Any] = []
    yield items
    await aclose_all(items)


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[tuple[Receiver, int]]:
    """An OTLP/gRPC receiver on a free port: (what it received, its port)."""
    rec, port, server = await start_receiver()
    yield rec, port
    await server.stop(0)
