"""Shared fixtures: a real nats-server per test on a random port, in-memory span capture."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devmesh.nats_server import NatsServer
from services.core.config import CommonConfig
from tools.shared_data import SharedDataMissing, shared_path


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


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def common(tmp_path: Path, nats_server: NatsServer) -> CommonConfig:
    return CommonConfig(
        listen="127.0.0.1:0",
        nats_url=nats_server.url,
        data_dir=tmp_path / "data",
        log_format="console",
        shutdown_grace_s=0.5,
        outbox_sweep_ms=100,
    )


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
