"""Sustained usage ingest: events per second from JetStream to committed rows, on SQLite and on
PostgreSQL, side by side with a bare nats-py pull consumer that only acks (the ceiling here).

One nats-server; the usage stream is filled once with ``--events`` UsageRecorded events (tenant
``acme``, unique ids, integer quantities), before anything consumes. Then, ``--repeats`` times
each, in turn:

- ``bare``: a nats-py durable pull consumer in this process: fetch ``--batch`` at a time, ack
  every message, nothing else (no decode, no database).
- ``sqlite`` / ``postgresql``: the real metering service (``python -m services.metering``, its
  own process and event loop, its batch consumer: fetch, validate, one transaction, then ack),
  on a fresh SQLite file / a fresh database on a throwaway PostgreSQL server. Its durable
  consumer is deleted between runs, so every run reads the whole stream from the start.

A run's rate is events / time between the first and the last commit (metering: rows counted in
its database every 20 ms; bare: the first fetch to the last ack), so process start-up is not in
it. Every metering run must end with exactly ``--events`` rows. Figures: median and spread over
the repeats, and each backend's median as a share of the bare consumer's.

    .venv/bin/python -m bench.metering_ingest [--events 100000] [--repeats 3] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bench._util import BenchError, median, spawn, stop, table, wait_ready
from devmesh.nats_server import NatsServer
from pocgrid.v1 import events_pb2
from services.core.bus import STREAMS

STREAM = "POCGRID_USAGE"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _event(i: int) -> events_pb2.UsageRecorded:
    event = events_pb2.UsageRecorded(
        event_id=f"bench-{i}",
        tenant="acme",
        node_id="bench-node",
        chip="ascend-910b" if i % 2 else "mlu370-x8",
        job_id=f"job-{i % 50}",
        model="bench",
        tokens_in=100,
        tokens_out=20,
        busy_device_us=1_000 + i % 7,
        memory_byte_seconds=1 << 20,
        devices=1,
    )
    ended = T0 + timedelta(milliseconds=i)
    event.started_at.FromDatetime(ended - timedelta(milliseconds=1))
    event.ended_at.FromDatetime(ended)
    event.occurred_at.FromDatetime(ended)
    return event


async def fill(url: str, events: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for spec in STREAMS:
        with contextlib.suppress(Exception):
            await js.add_stream(name=spec.name, subjects=list(spec.subjects))
    window = 2000
    for start in range(0, events, window):
        await asyncio.gather(
            *(
                js.publish(
                    "usage.recorded",
                    _event(i).SerializeToString(),
                    headers={"Nats-Msg-Id": f"bench-{i}"},
                )
                for i in range(start, min(events, start + window))
            )
        )
    info = await js.stream_info(STREAM)
    await nc.close()
    if info.state.messages != events:
        raise BenchError(f"stream holds {info.state.messages} events, expected {events}")


async def bare(url: str, events: int, batch: int, durable: str) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,
            filter_subject="usage.>",
        ),
    )
    sub = await js.pull_subscribe_bind(durable=durable, stream=STREAM)
    done = 0
    first = 0.0
    while done < events:
        try:
            msgs = await sub.fetch(batch, timeout=1.0)
        except TimeoutError:
            continue
        if not first:
            first = time.perf_counter()
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - first
    await nc.close()
    return events / elapsed


async def _count(db_url: str, events: int, child_alive: Callable[[], bool]) -> float:
    """Rows per second between the first and the last commit the poll sees."""
    engine = create_async_engine(db_url)
    first_t = 0.0
    first_n = 0
    try:
        while True:
            if not child_alive():
                raise BenchError("metering exited during the run")
            try:
                async with engine.connect() as conn:
                    n = int(
                        (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar()
                        or 0
                    )
            except Exception:  # the table does not exist until the migrations ran
                n = 0
            now = time.perf_counter()
            if n and not first_t:
                first_t, first_n = now, n
            if n >= events:
                if n != events:
                    raise BenchError(f"{n} rows for {events} events")
                if now == first_t:
                    raise BenchError("the whole run fitted in one poll: use more --events")
                return (n - first_n) / (now - first_t)
            await asyncio.sleep(0.02)
    finally:
        await engine.dispose()


async def _delete_durable(url: str) -> None:
    nc = await nats.connect(url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_consumer(STREAM, "metering")
    await nc.close()


async def metering(
    url: str, db_url: str, events: int, batch: int, run_dir: Path, name: str
) -> float:
    await _delete_durable(url)
    child = spawn(
        name,
        ["-m", "services.metering"],
        {
            "POCGRID_NATS_URL": url,
            "POCGRID_DATA_DIR": str(run_dir / name),
            "POCGRID_METERING_DATABASE_URL": db_url,
            "POCGRID_API_KEYS": "bench-key=acme",
            "POCGRID_CONSUMER_BATCH": str(batch),
            "POCGRID_LOG_LEVEL": "warning",
        },
        run_dir,
    )
    try:
        await asyncio.to_thread(wait_ready, [child], run_dir)
        return await _count(db_url, events, lambda: child.proc.poll() is None)
    finally:
        stop([child])


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    from tests.postgres import postgres_server

    yield from postgres_server()


async def _fresh_pg(server: str, name: str) -> str:
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def _spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


async def main_async(args: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="pocgrid-bench-metering-"))
    server = NatsServer(run_dir / "nats")
    server.start()
    try:
        t = time.perf_counter()
        await fill(server.url, args.events)
        print(f"stream filled: {args.events:,} events in {time.perf_counter() - t:.1f} s")
        rates: dict[str, list[float]] = {"bare": [], "sqlite": [], "postgresql": []}
        with _postgres() as pg_server:
            for r in range(args.repeats):
                rates["bare"].append(await bare(server.url, args.events, args.batch, f"bare{r}"))
                sqlite_url = f"sqlite+aiosqlite:///{run_dir / f'metering-{r}.db'}"
                rates["sqlite"].append(
                    await metering(
                        server.url, sqlite_url, args.events, args.batch, run_dir, f"sqlite{r}"
                    )
                )
                pg_url = await _fresh_pg(pg_server, f"bench_metering_{r}")
                rates["postgresql"].append(
                    await metering(server.url, pg_url, args.events, args.batch, run_dir, f"pg{r}")
                )
                print(
                    f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items())
                )
        ceiling = median(rates["bare"])
        rows = [
            [
                name,
                f"{median(values):,.0f}",
                _spread(values),
                f"{median(values) / ceiling:.2f}x",
            ]
            for name, values in rates.items()
        ]
        print()
        print(
            f"usage ingest, {args.events:,} events, batch {args.batch}, "
            f"{args.repeats} repeats (events/s, JetStream to committed rows)"
        )
        print(table(["consumer", "median/s", "range/s", "vs bare"], rows))
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
