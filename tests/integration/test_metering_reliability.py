"""Nothing lost, nothing counted twice: N usage events published while the metering service is
SIGKILLed and restarted (twice) and while nats-server is restarted once; afterwards the metered
totals equal the published totals exactly, on SQLite and on PostgreSQL. The test prints N and
both totals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from devmesh.nats_server import NatsServer
from pocgrid.healthcheck import probe
from pocgrid.meters import METERS
from pocgrid.v1 import events_pb2
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

N = 3000
REPO = Path(__file__).resolve().parents[2]
FIELDS = [m.source_field for m in METERS.values()]


def _event(i: int) -> events_pb2.UsageRecorded:
    event = events_pb2.UsageRecorded(
        event_id=f"rel-{i}",
        tenant="acme" if i % 3 else "globex",
        node_id="node-r",
        chip="ascend-910b",
        job_id=f"job-{i % 7}",
        tokens_in=i % 97 + 1,
        tokens_out=i % 13,
        samples=i % 5,
        busy_device_us=1_000 + i,
        memory_byte_seconds=(1 << 30) + i,
        devices=1,
    )
    event.ended_at.FromSeconds(1_780_000_000 + i)
    event.started_at.FromSeconds(1_780_000_000 + i - 1)
    return event


class Metering:
    """``python -m services.metering`` as its own process, started and SIGKILLed at will."""

    def __init__(
        self, tmp: Path, nats_url: str, mesh_keys_dir: Path, db_url: str, name: str = "metering"
    ) -> None:
        self.db_url = db_url
        self.address_file = tmp / f"{name}.addr"
        self.log = tmp / f"{name}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("POCGRID_")},
            "POCGRID_NATS_URL": nats_url,
            "POCGRID_DATA_DIR": str(tmp),
            "POCGRID_MESH_KEYS_DIR": str(mesh_keys_dir),
            "POCGRID_METERING_DATABASE_URL": db_url,
            "POCGRID_API_KEYS": "ka=acme,kg=globex",
            "POCGRID_LISTEN": "127.0.0.1:0",
            "POCGRID_ADDRESS_FILE": str(self.address_file),
            "POCGRID_PARENT_PID": str(os.getpid()),
            # A batch in hand when the process dies comes back after this.
            "POCGRID_CONSUMER_ACK_WAIT_S": "2",
            "POCGRID_CONSUMER_FETCH_WAIT_S": "0.2",
            "POCGRID_METERING_INGEST_BATCH": "200",
            "PYTHONPATH": str(REPO),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _spawn(self) -> None:
        self.address_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.metering"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    async def start(self) -> None:
        self._spawn()

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"metering exited: {self.log.read_text()[-2000:]}")
            if not self.address_file.exists():
                return False
            return await asyncio.to_thread(probe, self.address_file.read_text().strip(), 1.0)

        await wait_for(ready, within=60, what="metering to serve")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def totals(self) -> tuple[int, dict[str, int]]:
        query = (
            "SELECT count(*), "
            + ", ".join(f"coalesce(sum({f}), 0)" for f in FIELDS)
            + " FROM usage_records"
        )
        engine = create_async_engine(self.db_url)
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(text(query))).one()
        except DBAPIError:  # not migrated yet
            return 0, dict.fromkeys(FIELDS, 0)
        finally:
            await engine.dispose()
        return int(row[0]), dict(zip(FIELDS, map(int, row[1:]), strict=True))


async def _publish_all(url: str, on_progress: Callable[[int], Awaitable[None]]) -> dict[str, int]:
    """Publish every event once, retrying each (same Nats-Msg-Id) until JetStream acks it."""
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=2)
    totals = dict.fromkeys(FIELDS, 0)
    try:
        for i in range(N):
            event = _event(i)
            while True:
                try:
                    await js.publish(
                        "usage.recorded",
                        event.SerializeToString(),
                        headers={"Nats-Msg-Id": event.event_id},
                    )
                    break
                except Exception:  # NATS restarting: the same id again; JetStream dedupes
                    await asyncio.sleep(0.1)
            for f in FIELDS:
                totals[f] += getattr(event, f)
            await on_progress(i + 1)
    finally:
        await nc.close()
    return totals


async def test_metered_totals_equal_published_totals_across_kills_and_a_nats_restart(
    tmp_path: Path,
    nats_server: NatsServer,
    mesh_keys: Path,
    fresh_database: Callable[[str], str],
) -> None:
    metering = Metering(tmp_path, nats_server.url, mesh_keys, fresh_database("reliability"))
    await metering.start()
    done_outages: list[str] = []
    thresholds = (N // 4, N // 2, 3 * N // 4)
    reached = {at: asyncio.Event() for at in thresholds}
    begun = {at: asyncio.Event() for at in thresholds}

    async def on_progress(published: int) -> None:
        if published in reached:
            # Hold on until the outage has begun, then publish on through it.
            reached[published].set()
            await begun[published].wait()
        elif published % 25 == 0:
            await asyncio.sleep(0.02)  # a steady stream, not one burst

    async def outages() -> None:
        # At 1/4 and 1/2 of N: SIGKILL metering (what it had fetched and not committed comes
        # back) and start it again; at 3/4: stop nats-server and start it again. The publisher
        # goes on meanwhile.
        for at, what in zip(thresholds, ("kill", "kill", "nats"), strict=True):
            await reached[at].wait()
            if what == "kill":
                metering.kill()
                begun[at].set()
                done_outages.append(f"metering SIGKILLed at {at} published")
                await metering.start()
            else:
                await asyncio.to_thread(nats_server.stop)
                begun[at].set()
                done_outages.append(f"nats-server stopped at {at} published")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(nats_server.start)

    try:
        published, _ = await asyncio.gather(_publish_all(nats_server.url, on_progress), outages())

        async def all_metered() -> bool:
            return (await metering.totals())[0] >= N

        await wait_for(all_metered, within=120, every=0.2, what=f"metering to store all {N} events")
        count, metered = await metering.totals()
        backend = metering.db_url.split(":")[0]
        print(f"\n{backend}: N = {N} events published; outages: {'; '.join(done_outages)}")
        print(f"published totals: {published}")
        print(f"metered totals:   {metered} ({count} records)")
        assert len(done_outages) == 3
        assert count == N
        assert metered == published
    finally:
        metering.stop()


async def test_two_replicas_started_together_share_the_stream_and_count_each_event_once(
    tmp_path: Path,
    nats_server: NatsServer,
    mesh_keys: Path,
    fresh_database: Callable[[str], str],
) -> None:
    # How metering scales (docs/metering.md): replicas on one database share the durable
    # consumer. Started at once on a new database, both used to race its migration and its
    # price book, and one failed at start-up.
    db_url = fresh_database("replicas")
    replicas = [
        Metering(tmp_path, nats_server.url, mesh_keys, db_url, name=f"metering-{k}")
        for k in range(2)
    ]
    for replica in replicas:
        replica.env["POCGRID_LOG_LEVEL"] = "debug"  # each batch it stores is logged
    await asyncio.gather(*(r.start() for r in replicas))

    async def on_progress(published: int) -> None:
        if published == 3 * N // 4:
            replicas[0].kill()  # what it had fetched goes to the other replica
        elif published % 25 == 0:
            await asyncio.sleep(0.02)

    try:
        published = await _publish_all(nats_server.url, on_progress)

        async def all_metered() -> bool:
            return (await replicas[1].totals())[0] >= N

        await wait_for(all_metered, within=120, every=0.2, what=f"the replicas to store {N}")
        count, metered = await replicas[1].totals()
        stored = [_stored(r.log) for r in replicas]
        print(f"\nN = {N}; stored by each replica (one SIGKILLed at 3/4): {stored}")
        print(f"published totals: {published}")
        print(f"metered totals:   {metered} ({count} records)")
        assert count == N and metered == published
        assert all(stored), "both replicas took part"
    finally:
        for replica in replicas:
            replica.stop()


def _stored(log: Path) -> int:
    """Usage rows a replica committed, from its ``usage.batch`` log lines (JSON, one per line;
    a redelivered batch the other replica had stored counts again: an upper bound, > 0 when it
    took part)."""
    lines = (
        json.loads(line)
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("{") and line.endswith("}")  # not a line cut short by SIGKILL
    )
    return sum(e.get("stored", 0) for e in lines if e.get("event") == "usage.batch")
