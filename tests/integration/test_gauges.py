"""The operators' gauges, read as Prometheus would: scraped from each service's
``POCGRID_METRICS_LISTEN`` endpoint while the mesh works, and seen to move.

Queue depth and pool utilization come from the scheduler; the ingest lag from metering, as a
time (the last commit's lag behind its events) and as events (its consumer's backlog), which
grows while metering's database is held by another writer and falls to 0 when it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from pocgrid.v1 import events_pb2, scheduler_pb2
from services.core.config import CommonConfig
from services.core.service import Service
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from services.metering.tables import UsageRow
from tests.conftest import wait_for
from tests.integration.test_metering import Publisher, _ts
from tests.integration.test_placement import (
    ACME,
    CHIP,
    EVALUATION,
    QUEUED,
    RUNNING,
    Mesh,
    _spec,
    _submit,
    _wait_state,
)

pytestmark = pytest.mark.integration

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(service: Service) -> Series:
    """Every sample on the service's /metrics, by (name, labels)."""
    url = f"http://127.0.0.1:{service.metrics.prometheus_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float | None:
    """The sample ``name`` whose labels include ``labels``; None when there is none."""
    want = set(labels.items())
    found = [v for (n, ls), v in series.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name}{labels}: {len(found)} series"
    return found[0] if found else None


async def until(
    service: Service, what: str, check: Callable[[Series], bool], within: float = 20
) -> Series:
    seen: Series = {}

    async def ok() -> bool:
        seen.clear()
        seen.update(await asyncio.to_thread(scrape, service))
        return check(seen)

    try:
        await wait_for(ok, within=within, what=what)
    except AssertionError as exc:
        pocgrid = {k: v for k, v in seen.items() if k[0].startswith("pocgrid_")}
        raise AssertionError(f"{exc}; last scrape: {pocgrid}") from None
    return seen


@pytest.fixture
def metered(common: CommonConfig) -> CommonConfig:
    # Every service of the test serves /metrics on a port of its own; gauges sampled often.
    return dataclasses.replace(common, metrics_listen="127.0.0.1:0", gauge_interval_ms=50)


async def test_queue_depth_and_pool_utilization_move_with_the_jobs(metered, closer):
    mesh = Mesh(metered, closer)
    await mesh.start_registry()
    await mesh.agent("npu-a", devices=2, speed=0.0)
    stub = await mesh.start_scheduler()
    scheduler = mesh.scheduler
    assert scheduler is not None
    queue, held, util = (
        "pocgrid_scheduler_queue_depth",
        "pocgrid_pool_devices_held",
        "pocgrid_pool_utilization",
    )

    def state(q: float, h: float, u: float) -> Callable[[Series], bool]:
        return lambda s: (
            value(s, queue, kind="evaluation") == q
            and value(s, held, chip=CHIP) == h
            and value(s, util, chip=CHIP) == u
        )

    idle = await until(scheduler, "an idle pool", state(0, 0, 0))
    assert value(idle, "pocgrid_pool_devices_total", chip=CHIP) == 2
    assert value(idle, queue, kind="batch") == 0

    both = await _submit(stub, _spec(kind=EVALUATION, devices=2))
    await _wait_state(stub, both.job_id, RUNNING)
    await until(scheduler, "both devices held", state(0, 2, 1))

    one = await _submit(stub, _spec(kind=EVALUATION, devices=1))
    await _wait_state(stub, one.job_id, QUEUED)
    await until(scheduler, "a job waiting", state(1, 2, 1))

    await stub.CompleteJob(scheduler_pb2.CompleteJobRequest(job_id=both.job_id), metadata=ACME)
    await _wait_state(stub, one.job_id, RUNNING)
    await until(scheduler, "the waiting job placed", state(0, 1, 0.5))
    await mesh.close()


@contextlib.asynccontextmanager
async def usage_table_held(database_url: str) -> AsyncIterator[None]:
    """Another writer holds metering's usage table (SQLite: the whole file) until the block
    ends: metering's inserts wait, then fail and are retried, like on a database in trouble."""
    if database_url.startswith("sqlite"):
        path = make_url(database_url).database
        assert path is not None
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    dsn = make_url(database_url).set(drivername="postgresql")
    pg = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    tx = pg.transaction()
    await tx.start()
    await pg.execute(f"LOCK TABLE {UsageRow.__tablename__} IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        await tx.rollback()
        await pg.close()


def _usage(event_id: str, ended: datetime) -> events_pb2.UsageRecorded:
    return events_pb2.UsageRecorded(
        event_id=event_id,
        tenant="acme",
        chip=CHIP,
        node_id="npu-a",
        job_id="job-a",
        tokens_in=10,
        started_at=_ts(ended - timedelta(seconds=1)),
        ended_at=_ts(ended),
    )


async def test_ingest_lag_and_backlog_move_with_metering(metered, closer, nats_server):
    metering = MeteringServer(
        dataclasses.replace(metered, consumer_backoff_initial_s=0.2, consumer_backoff_max_s=0.5),
        MeteringConfig(api_keys="key-acme=acme"),
    )
    await metering.start()
    closer.append(metering)
    lag, pending = "pocgrid_metering_ingest_lag_seconds", "pocgrid_bus_consumer_pending"
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    try:
        # Usage that ended an hour ago, arriving only now: an hour behind.
        await pub.publish(_usage("old-1", datetime.now(UTC) - timedelta(hours=1)))
        behind = await until(metering, "an hour's lag", lambda s: (value(s, lag) or 0) > 3500)
        assert (value(behind, lag) or 0) < 3700
        await wait_for(pub.consumed, what="the old event acknowledged")
        await until(
            metering, "an empty backlog", lambda s: value(s, pending, consumer="metering") == 0
        )

        [db] = metering._databases
        async with usage_table_held(db.engine.url.render_as_string(hide_password=False)):
            for i in range(5):
                await pub.publish(_usage(f"new-{i}", datetime.now(UTC)))
            await until(
                metering,
                "a backlog of 5 while the database is held",
                lambda s: value(s, pending, consumer="metering") == 5,
            )
        await until(
            metering,
            "the backlog drained and fresh usage close behind",
            lambda s: value(s, pending, consumer="metering") == 0 and (value(s, lag) or 1e9) < 60,
            within=30,
        )
    finally:
        await nc.close()
