"""Sustained usage ingest: events per second from JetStream to committed rows, on SQLite and on
PostgreSQL, side by side with bare pull consumers that only ack (the ceiling here).

One nats-server; the usage stream is filled once with ``--events`` UsageRecorded events (tenant
``acme``, unique ids, integer quantities), before anything consumes. Then, ``--repeats`` times
each, in turn:

- ``bare nats-py``: a nats-py durable pull consumer in this process: ``fetch(--batch)``, ack
  every message, nothing else (no decode, no database).
- ``bare bus fetch``: the same, fetching the way the service's bus does (``PullBatcher``: one
  pull request per fetch, messages off a callback subscription, instead of nats-py's task per
  message). This is the fair ceiling for metering, which fetches this way too.
- ``sqlite`` / ``postgresql``: the real metering service (``python -m services.metering``, its
  own process and event loop, its batch consumer: fetch ``--batch``, validate, one transaction,
  then ack), on a fresh SQLite file / a fresh database on a throwaway PostgreSQL server. Its
  durable consumer is deleted between runs, so every run reads the whole stream from the start.

Every consumer has the same fetch size; the bare ones ack a fetch before the next, under the
server's default ack-pending limit (1000), while metering (pipelined: the next fetch while a
batch commits) has its durable's own: two batches for each of up to four replicas. A
run's rate is events / time between the first and the last ack seen (metering acks a batch
only after it committed; its durable's ack floor is polled every 20 ms over NATS, which costs
the machine next to nothing, unlike counting rows), so process start-up is not in it; every
metering run must end with exactly ``--events`` rows. Figures: median and spread over the
repeats, each median as a share of both bare medians, the consumer's CPU per event over the
run, and the load average before and after.

Then, once per backend, the **CPU per event of each step** metering takes, measured apart: the
same functions the service runs (the bus's fetch, decode, the recorder's checks and rows, the
store's one-transaction insert, the acks), called in turn in this process on one more pass over
the stream, each step timed with ``time.process_time`` (every thread of the process: SQLite's
driver thread included, the PostgreSQL server's own CPU not). What the service spends beyond
their sum is its own overhead (the supervisor, the batch span and its links, logging).

``--replicas 1,2`` (the default) runs metering as one process, then as two replicas sharing
the durable on one database (how metering scales, ``docs/metering.md``), named ``sqlite x2``
and ``postgresql x2``; a replicas run's CPU is that of all its processes.

``--baseline TREE`` adds the metering service of another source tree (an older commit, e.g.
``git archive COMMIT | tar -x -C TREE``) as ``sqlite @base`` and ``postgresql @base``, run in
the same repeats, interleaved with this tree's, so a change is measured before and after under
the same load, at each replica count.

    .venv/bin/python -m bench.metering_ingest [--events 100000] [--repeats 3] [--batch 1000]
        [--replicas 1,2] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bench._util import (
    REPO_ROOT,
    BenchError,
    Child,
    cpu_seconds,
    median,
    spawn,
    stop,
    table,
    wait_ready,
)
from devmesh.nats_server import NatsServer
from pocgrid import deadletter
from pocgrid.v1 import events_pb2
from services.core.bus import STREAMS, PullBatcher, delivery_count
from services.core.migrations import migrate
from services.core.storage import Database
from services.metering.migrations import MIGRATIONS
from services.metering.recorder import problem, to_values
from services.metering.store import UsageStore

STREAM = "POCGRID_USAGE"


@dataclass(frozen=True)
class Run:
    rate: float
    """Events per second."""
    cpu_s: float
    """CPU seconds of the consuming process per event (all its threads)."""


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


async def _add_consumer(js: JetStreamContext, durable: str) -> None:
    """The durable pull consumer each measured consumer reads the stream through."""
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


async def bare(url: str, events: int, batch: int, durable: str, bus_fetch: bool) -> Run:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await _add_consumer(js, durable)
    fetch: Callable[[], Awaitable[list[Any]]]
    if bus_fetch:
        puller = PullBatcher(nc, STREAM, durable)
        await puller.start()

        async def fetch() -> list[Any]:
            return await puller.fetch(batch, 1.0)
    else:
        sub = await js.pull_subscribe_bind(durable=durable, stream=STREAM)

        async def fetch() -> list[Any]:
            try:
                return list(await sub.fetch(batch, timeout=1.0))
            except TimeoutError:
                return []

    done = 0
    first = 0.0
    cpu = 0.0
    while done < events:
        msgs = await fetch()
        if msgs and not first:
            first, cpu = time.perf_counter(), time.process_time()
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - first
    cpu = time.process_time() - cpu
    await nc.close()
    return Run(events / elapsed, cpu / events)


async def _acked(js: Any, durable: str) -> int:
    """Stream sequence up to which the durable has acked everything (0 before it exists)."""
    try:
        info = await js.consumer_info(STREAM, durable)
    except NotFoundError:
        return 0
    return int(info.ack_floor.stream_seq or 0)


async def _rows(db_url: str) -> int:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar() or 0
            )
    finally:
        await engine.dispose()


async def _measure(url: str, db_url: str, events: int, children: list[Child]) -> Run:
    """Acked events per second between the first and the last ack the poll sees."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    first_t = 0.0
    first_n = 0
    first_cpu = 0.0
    try:
        while True:
            if any(c.proc.poll() is not None for c in children):
                raise BenchError("metering exited during the run")
            n = await _acked(js, "metering")
            now = time.perf_counter()
            if n and not first_t:
                first_t, first_n, first_cpu = now, n, _cpu(children)
            if n >= events:
                if now == first_t:
                    raise BenchError("the whole run fitted in one poll: use more --events")
                cpu = _cpu(children) - first_cpu
                break
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
    rows = await _rows(db_url)
    if rows != events:
        raise BenchError(f"{rows} rows for {events} events")
    return Run((n - first_n) / (now - first_t), cpu / (n - first_n))


def _replicas(k: int) -> str:
    """How a run's name says its replica count: nothing for one process, " x2" for two."""
    return "" if k == 1 else f" x{k}"


def _cpu(children: list[Child]) -> float:
    return sum(cpu_seconds(c.pid) for c in children)


STEPS = ("fetch", "decode", "check", "row", "store", "ack")


async def breakdown(
    url: str, db_url: str, events: int, batch: int, durable: str
) -> dict[str, float]:
    """CPU seconds per event of each of metering's steps (see the module's docstring)."""
    db = Database(db_url)
    await migrate(db, MIGRATIONS)
    store = UsageStore(db)
    tenants = await store.add_tenants(["acme"])
    nc = await nats.connect(url)
    js = nc.jetstream()
    await _add_consumer(js, durable)
    puller = PullBatcher(nc, STREAM, durable)
    await puller.start()
    cpu = dict.fromkeys(STEPS, 0.0)
    last = time.process_time()

    def lap(step: str) -> None:
        """Charge the CPU time since the last lap to ``step``."""
        nonlocal last
        now = time.process_time()
        cpu[step] += now - last
        last = now

    done = 0
    try:
        while done < events:
            lap("ack")  # the loop's own turn: next to nothing
            msgs = await puller.fetch(batch, 1.0)
            lap("fetch")
            decoded = [
                (
                    events_pb2.UsageRecorded.FromString(m.data),
                    deadletter.event_id(m.headers or {}),
                    delivery_count(m),
                )
                for m in msgs
            ]
            lap("decode")
            ok = [(e, i) for e, i, _ in decoded if not problem(e, i, tenants)]
            lap("check")
            values = [to_values(e, i) for e, i in ok]
            lap("row")
            if values:
                await store.record_batch((), values)
            lap("store")
            for m in msgs:
                await m.ack()
            await nc.flush()
            lap("ack")
            done += len(msgs)
    finally:
        await nc.close()
        await db.dispose()
    return {k: v / events for k, v in cpu.items()}


async def _delete_durable(url: str) -> None:
    nc = await nats.connect(url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_consumer(STREAM, "metering")
    await nc.close()


async def metering(
    url: str,
    db_url: str,
    events: int,
    batch: int,
    run_dir: Path,
    name: str,
    tree: Path | None = None,
    replicas: int = 1,
) -> Run:
    await _delete_durable(url)
    children = [
        spawn(
            f"{name}.{k}",
            ["-m", "services.metering"],
            {
                "POCGRID_NATS_URL": url,
                "POCGRID_DATA_DIR": str(run_dir / f"{name}.{k}"),
                "POCGRID_METERING_DATABASE_URL": db_url,
                "POCGRID_API_KEYS": "bench-key=acme",
                "POCGRID_METERING_INGEST_BATCH": str(batch),
                "POCGRID_LOG_LEVEL": "warning",
            },
            run_dir,
            tree if tree is not None else REPO_ROOT,
        )
        for k in range(replicas)
    ]
    try:
        await asyncio.to_thread(wait_ready, children, run_dir)
        return await _measure(url, db_url, events, children)
    finally:
        stop(children)


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


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


async def main_async(args: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="pocgrid-bench-metering-"))
    server = NatsServer(run_dir / "nats")
    server.start()
    load_before = _load()
    try:
        t = time.perf_counter()
        await fill(server.url, args.events)
        print(f"stream filled: {args.events:,} events in {time.perf_counter() - t:.1f} s")
        # Each measured metering: a suffix naming it, its source tree, how many replicas.
        trees: dict[str, Path | None] = {"": None}
        if args.baseline is not None:
            trees[" @base"] = args.baseline.resolve()
        variants: list[tuple[str, Path | None, int]] = [
            (_replicas(k) + suffix, tree, k)
            for suffix, tree in trees.items()
            for k in args.replicas
        ]
        runs: dict[str, list[Run]] = {"bare nats-py": [], "bare bus fetch": []}
        for suffix, _, _ in variants:
            runs[f"sqlite{suffix}"] = []
            runs[f"postgresql{suffix}"] = []
        with _postgres() as pg_server:
            for r in range(args.repeats):
                runs["bare nats-py"].append(
                    await bare(server.url, args.events, args.batch, f"bare{r}", False)
                )
                runs["bare bus fetch"].append(
                    await bare(server.url, args.events, args.batch, f"barebus{r}", True)
                )
                for t, (suffix, tree, replicas) in enumerate(variants):
                    sqlite_url = f"sqlite+aiosqlite:///{run_dir / f'metering-{r}-{t}.db'}"
                    runs[f"sqlite{suffix}"].append(
                        await metering(
                            server.url,
                            sqlite_url,
                            args.events,
                            args.batch,
                            run_dir,
                            f"sqlite{r}-{t}",
                            tree,
                            replicas,
                        )
                    )
                    pg_url = await _fresh_pg(pg_server, f"bench_metering_{r}_{t}")
                    runs[f"postgresql{suffix}"].append(
                        await metering(
                            server.url,
                            pg_url,
                            args.events,
                            args.batch,
                            run_dir,
                            f"pg{r}-{t}",
                            tree,
                            replicas,
                        )
                    )
                print(
                    f"repeat {r + 1}: "
                    + ", ".join(f"{k} {v[-1].rate:,.0f}/s" for k, v in runs.items())
                )
            steps = {
                "sqlite": await breakdown(
                    server.url,
                    f"sqlite+aiosqlite:///{run_dir / 'breakdown.db'}",
                    args.events,
                    args.batch,
                    "breakdown-sqlite",
                ),
                "postgresql": await breakdown(
                    server.url,
                    await _fresh_pg(pg_server, "bench_metering_breakdown"),
                    args.events,
                    args.batch,
                    "breakdown-pg",
                ),
            }
        nats_py = median([x.rate for x in runs["bare nats-py"]])
        bus = median([x.rate for x in runs["bare bus fetch"]])
        rows = []
        for name, values in runs.items():
            rates = [x.rate for x in values]
            rows.append(
                [
                    name,
                    f"{median(rates):,.0f}",
                    _spread(rates),
                    f"{median(rates) / nats_py:.2f}x",
                    f"{median(rates) / bus:.2f}x",
                    f"{median([x.cpu_s for x in values]) * 1e6:.1f}",
                ]
            )
        print()
        print(
            f"usage ingest, {args.events:,} events, batch {args.batch}, "
            f"{args.repeats} repeats (events/s, JetStream to committed rows); "
            f"load average before {load_before}, after {_load()}"
        )
        headers = ["consumer", "median/s", "range/s", "vs nats-py", "vs bus fetch", "CPU us/event"]
        print(table(headers, rows))
        if args.baseline is not None:
            # Each repeat ran this tree and the baseline back to back: the ratio within a
            # repeat cancels most of the machine's drift in load between repeats.
            paired = {
                b: median(
                    [
                        new.rate / old.rate
                        for new, old in zip(runs[b], runs[f"{b} @base"], strict=True)
                    ]
                )
                for b in (
                    backend + _replicas(k)
                    for k in args.replicas
                    for backend in ("sqlite", "postgresql")
                )
            }
            print(
                "this tree / @base, median of the per-repeat ratios: "
                + ", ".join(f"{b} {r:.2f}x" for b, r in paired.items())
            )
        print()
        print("CPU us per event of each step, measured apart in one process (see the docstring):")
        first = _replicas(args.replicas[0])
        step_rows = [[step, *(f"{steps[b][step] * 1e6:.1f}" for b in steps)] for step in STEPS]
        step_rows.append(["sum", *(f"{sum(steps[b].values()) * 1e6:.1f}" for b in steps)])
        step_rows.append(
            [
                f"the service{first}, measured above",
                *(f"{median([x.cpu_s for x in runs[b + first]]) * 1e6:.1f}" for b in steps),
            ]
        )
        print(table(["step", *steps], step_rows))
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--replicas",
        type=lambda v: [int(k) for k in v.split(",")],
        default=[1, 2],
        help="metering replicas sharing the durable, one set of runs per count (default 1,2)",
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another source tree's metering, interleaved"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
