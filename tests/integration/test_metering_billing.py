"""Ingest rules and invoices against real JetStream and a real database: bad events refused
with their reason while the rest of their batch is stored, corrections as compensating
records, late usage moving a draft invoice but never a final one."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import nats
import pytest
from sqlalchemy import text

from pocgrid import deadletter
from pocgrid.price_book import default_price_book
from pocgrid.v1 import metering_pb2, metering_pb2_grpc
from services.core.bus import STREAMS
from services.core.config import ConfigError
from services.core.migrations import migrate
from services.core.storage import Database
from services.metering.config import MeteringConfig
from services.metering.invoices import Invoicer
from services.metering.invoicing import Month
from services.metering.migrations import MIGRATIONS
from services.metering.recorder import to_row
from services.metering.service import MeteringServer
from services.metering.store import UsageFilter, UsageStore
from tests.conftest import service_channel, wait_for
from tests.integration.test_metering import ACME, TENANTS, Publisher, _usage

pytestmark = pytest.mark.integration

NOV = Month(2026, 11)
HOUR_US = 3_600_000_000


async def _dead_letters(url: str) -> dict[str, str]:
    """Original event id -> reason, of every dead letter so far."""
    nc = await nats.connect(url)
    try:
        return {d.event_id: d.reason for d in await deadletter.list_dead_letters(nc.jetstream())}
    finally:
        await nc.close()


async def test_bad_events_are_refused_with_their_reason_and_their_batch_is_stored(
    common, closer, nats_server
) -> None:
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    for spec in STREAMS:  # as the first service to connect would
        await pub.js.add_stream(name=spec.name, subjects=list(spec.subjects))
    # One batch: published before metering starts, so its first fetch takes all of them.
    await pub.publish(_usage("good-1", tokens_in=10, busy_device_us=1_000))
    await pub.publish(_usage("negative", tokens_in=-5))
    await pub.publish(_usage("stranger", tenant="nobody", tokens_in=1))
    unknown = _usage("unknown-meter", tokens_in=3).SerializeToString() + bytes([0xF8, 0x06, 7])
    await pub.js.publish("usage.recorded", unknown, headers={"Nats-Msg-Id": "unknown-meter"})
    pub.last_seq += 1
    await pub.publish(_usage("good-2", tokens_out=4))
    await pub.publish(_usage("good-1", tokens_in=10, busy_device_us=1_000), msg_id="good-1-again")
    await pub.publish(_usage("undo", corrects="good-1", tokens_in=-20))
    await pub.publish(_usage("fix", corrects="good-1", tokens_in=-4))
    meter = MeteringServer(common, MeteringConfig(api_keys=TENANTS))
    await meter.start()
    closer.append(meter)
    await wait_for(pub.consumed, within=15, what="metering to take the whole batch")
    assert meter.store is not None
    records, _ = await meter.store.query(UsageFilter("*"), 0, 100)
    assert sorted(r.usage_id for r in records) == ["fix", "good-1", "good-2"]
    by_id = {r.usage_id: r for r in records}
    # The correction is its own record, in good-1's window, good-1 itself unchanged.
    assert by_id["fix"].tokens_in == -4 and by_id["fix"].corrects == "good-1"
    assert by_id["fix"].ended_at == by_id["good-1"].ended_at
    assert by_id["good-1"].tokens_in == 10 and by_id["good-1"].busy_device_us == 1_000
    reasons = await _dead_letters(nats_server.url)
    assert sorted(reasons) == ["negative", "stranger", "undo", "unknown-meter"]
    assert "tokens_in: -5 < 0" in reasons["negative"]
    assert "tenant: 'nobody' is unknown" in reasons["stranger"]
    assert "unknown field #111" in reasons["unknown-meter"]
    assert "tokens_in: the correction would take usage 'good-1' to -10" in reasons["undo"]
    await nc.close()


@pytest.fixture
def db_url(fresh_database: Callable[[str], str]) -> str:
    """A new, empty database on each backend (conftest's ``database_url``)."""
    return fresh_database("billing")


async def _store(url: str) -> tuple[Database, UsageStore]:
    db = Database(url)
    await migrate(db, MIGRATIONS)
    return db, UsageStore(db)


async def _put(store: UsageStore, event_id: str, ended: datetime, **fields) -> dict[str, str]:
    event = _usage(event_id, **fields)
    event.started_at.FromDatetime(ended - timedelta(minutes=1))
    event.ended_at.FromDatetime(ended)
    return await store.record_batch([to_row(event, event_id)])


def _amounts(invoice: metering_pb2.Invoice) -> dict[tuple[str, str], tuple[int, str]]:
    return {
        (line.adjustment_for, line.meter): (line.quantity, line.amount) for line in invoice.lines
    }


async def test_late_usage_moves_a_draft_never_a_final_invoice(db_url: str) -> None:
    db, store = await _store(db_url)
    try:
        now = [datetime(2026, 12, 1, 12, tzinfo=UTC)]
        invoicer = Invoicer(store, [default_price_book()], timedelta(days=1), clock=lambda: now[0])
        await _put(store, "n1", datetime(2026, 11, 20, tzinfo=UTC), busy_device_us=HOUR_US)
        draft = await invoicer.invoice("acme", NOV)
        assert draft is not None and draft.status == metering_pb2.INVOICE_STATUS_DRAFT
        # ascend-910b2 (ESTIMATE 1.80/h): an hour busy is 80 %, 1.44.
        assert draft.total == "1.440000"
        assert draft.final_at.ToDatetime(tzinfo=UTC) == datetime(2026, 12, 2, tzinfo=UTC)
        # Late usage for November inside the grace period lands on the draft, in its window.
        await _put(store, "n-late", datetime(2026, 11, 30, 23, tzinfo=UTC), busy_device_us=HOUR_US)
        moved = await invoicer.invoice("acme", NOV)
        assert moved is not None and moved.total == "2.880000"
        assert await invoicer.finalize_due() == []  # still in its grace period

        now[0] = datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC)
        assert await invoicer.finalize_due() == ["acme/2026-11"]
        final = await invoicer.invoice("acme", NOV)
        assert final is not None
        assert final.status == metering_pb2.INVOICE_STATUS_FINAL and final.total == "2.880000"
        frozen = final.SerializeToString(deterministic=True)
        on_it, _ = await store.query(UsageFilter("acme", invoice_id="acme/2026-11"), 0, 10)
        assert sorted(r.usage_id for r in on_it) == ["n-late", "n1"]

        # Later still: November usage after its invoice is final, December usage, and a
        # correction of November usage. November's invoice does not change; December's draft
        # carries the late ones as adjustments for 2026-11.
        await _put(
            store, "n-later", datetime(2026, 11, 29, tzinfo=UTC), busy_device_us=HOUR_US // 2
        )
        await _put(
            store, "d1", datetime(2026, 12, 1, 8, tzinfo=UTC), samples=5, busy_device_us=HOUR_US
        )
        fix = _usage("n1-fix", corrects="n1", busy_device_us=-HOUR_US // 4)
        assert await store.record_batch([to_row(fix, "n1-fix")]) == {}
        assert await invoicer.finalize_due() == []
        again = await invoicer.invoice("acme", NOV)
        assert again is not None
        assert again.SerializeToString(deterministic=True) == frozen
        dec = await invoicer.invoice("acme", Month(2026, 12))
        assert dec is not None
        assert dec.status == metering_pb2.INVOICE_STATUS_DRAFT
        assert _amounts(dec)[("2026-11", "busy_device_us")] == (HOUR_US // 4, "0.360000")
        assert _amounts(dec)[("", "busy_device_us")] == (HOUR_US, "1.440000")
        assert dec.total == "1.800000"
        assert list(dec.price_versions) == ["default-2026-12-01"]
        listed = await invoicer.invoices("acme")
        assert [(i.period, i.status) for i in listed] == [
            ("2026-11", metering_pb2.INVOICE_STATUS_FINAL),
            ("2026-12", metering_pb2.INVOICE_STATUS_DRAFT),
        ]
        # A correction that would take usage below zero is refused, naming the field.
        over = _usage("n1-over", corrects="n1", busy_device_us=-HOUR_US)
        refused = await store.record_batch([to_row(over, "n1-over")])
        assert "busy_device_us" in refused["n1-over"]
    finally:
        await db.dispose()


async def test_usage_before_the_first_price_book_is_finalized_priced_and_traceable(
    db_url: str,
) -> None:
    """Usage older than every price book (the default is in force from 2026-01-01) is stored
    at ingest, closed on its own month's final invoice priced by the earliest book on a line
    that says so, and listed by that invoice's id: nothing lost, and the finalizer goes on
    to the months after it (before, it raised on such usage at every turn, forever)."""
    db, store = await _store(db_url)
    try:
        now = [datetime(2026, 12, 3, tzinfo=UTC)]
        invoicer = Invoicer(store, [default_price_book()], timedelta(days=1), clock=lambda: now[0])
        await _put(store, "y2025", datetime(2025, 11, 15, tzinfo=UTC), busy_device_us=HOUR_US)
        await _put(store, "n1", datetime(2026, 11, 20, tzinfo=UTC), busy_device_us=HOUR_US)
        assert await invoicer.finalize_due() == ["acme/2025-11", "acme/2026-11"]
        old = await invoicer.invoice("acme", Month(2025, 11))
        assert old is not None and old.status == metering_pb2.INVOICE_STATUS_FINAL
        [busy] = [line for line in old.lines if line.meter == "busy_device_us"]
        # ascend-910b2 (ESTIMATE 1.80/h), an hour busy: 1.44, by the earliest book.
        assert (busy.quantity, busy.amount, busy.before_first_book) == (HOUR_US, "1.440000", True)
        assert busy.price_version == "default-2026-12-01" and old.total == "1.440000"
        on_it, _ = await store.query(UsageFilter("acme", invoice_id="acme/2025-11"), 0, 10)
        assert [r.usage_id for r in on_it] == ["y2025"]
        nov = await invoicer.invoice("acme", NOV)
        assert nov is not None and nov.total == "1.440000"
        assert not any(line.before_first_book for line in nov.lines)
        # Older usage arriving after both are final: an adjustment on the next draft, marked.
        await _put(store, "y2025-late", datetime(2025, 10, 1, tzinfo=UTC), busy_device_us=HOUR_US)
        dec = await invoicer.invoice("acme", Month(2026, 12))
        assert dec is not None
        [adj] = [line for line in dec.lines if line.meter == "busy_device_us"]
        assert (adj.adjustment_for, adj.amount, adj.before_first_book) == (
            "2025-10",
            "1.440000",
            True,
        )
        # Every stored record is on exactly one invoice or the open draft.
        _, total = await store.query(UsageFilter("acme"), 0, 10)
        assert total == 3
        assert sum(x.records for x in (old, nov, dec)) == 3
    finally:
        await db.dispose()


async def test_correct_usage_rpc(common, closer, nats_server) -> None:
    meter = MeteringServer(common, MeteringConfig(api_keys=TENANTS))
    await meter.start()
    closer.append(meter)
    nc = await nats.connect(nats_server.url)
    pub = Publisher(nc.jetstream())
    await pub.publish(_usage("u1", tokens_out=50))
    await wait_for(pub.consumed, within=10, what="metering to store u1")
    admin = (*ACME, ("x-pocgrid-role", "admin"))
    async with service_channel(meter.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        req = metering_pb2.CorrectUsageRequest(
            correction_id="c1", corrects="u1", meter="output_tokens", delta=-8, reason="retry"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CorrectUsage(req, metadata=ACME)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        resp = await stub.CorrectUsage(req, metadata=admin)
        assert resp.record.tokens_out == -8 and resp.record.corrects == "u1"
        assert (await stub.CorrectUsage(req, metadata=admin)).record == resp.record  # idempotent
        bad_meter = metering_pb2.CorrectUsageRequest(
            correction_id="c2", corrects="u1", meter="watts", delta=1
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CorrectUsage(bad_meter, metadata=admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("meter")
        too_much = metering_pb2.CorrectUsageRequest(
            correction_id="c3", corrects="u1", meter="output_tokens", delta=-43
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CorrectUsage(too_much, metadata=admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "tokens_out" in (err.value.details() or "")
        missing = metering_pb2.CorrectUsageRequest(
            correction_id="c4", corrects="nope", meter="samples", delta=1
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CorrectUsage(missing, metadata=admin)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        summary = await stub.GetUsageSummary(metering_pb2.GetUsageSummaryRequest(), metadata=ACME)
        assert [c.tokens_out for c in summary.by_chip] == [42]
    await nc.close()


async def test_price_books_are_stored_and_a_version_never_changes(db_url: str) -> None:
    db, store = await _store(db_url)
    try:
        book = default_price_book()
        [stored] = await store.keep_books([book])
        assert stored.book == book.book and stored.cards.keys() == book.cards.keys()
        assert stored.busy_device_hour("mlu370-x8") == book.busy_device_hour("mlu370-x8")
        assert stored.memory_gib_hour("enflame-i20") == book.memory_gib_hour("enflame-i20")
        assert len(await store.keep_books([book])) == 1  # the same again: nothing new
        card = book.cards["a100-80gb-sxm"]
        changed = dataclasses.replace(
            book,
            cards={**book.cards, card.chip: dataclasses.replace(card, card_hour=Decimal("9"))},
        )
        with pytest.raises(ConfigError, match="needs a new version"):
            await store.keep_books([changed])
    finally:
        await db.dispose()


async def test_two_replicas_correcting_one_record_at_once_cannot_take_it_below_zero(
    db_url: str,
) -> None:
    """Replica 1 has checked and written a correction of 60 of the record's 100, not yet
    committed; replica 2 corrects 60 more. It must wait for replica 1 and then be refused (on
    PostgreSQL it waits on the row lock; on SQLite a second writer waits on the file)."""
    db1, store1 = await _store(db_url)
    db2 = Database(db_url)  # another replica: its own engine (and, on SQLite, its own gate)
    store2 = UsageStore(db2)
    try:
        await _put(store1, "u", datetime(2026, 11, 20, tzinfo=UTC), samples=100)
        first = _usage("fix-1", corrects="u", samples=-60)
        second = _usage("fix-2", corrects="u", samples=-60)
        async with db1.session() as session, session.begin():
            assert await store1.record_in(session, [to_row(first, "fix-1")]) == {}
            racing = asyncio.ensure_future(store2.record_batch([to_row(second, "fix-2")]))
            if db1.is_sqlite:
                await asyncio.sleep(0.5)  # SQLite cannot say who waits; it must not finish
            else:
                await wait_for(lambda: _waiting_on_a_lock(db1), within=10, what="a lock wait")
            assert not racing.done(), "replica 2 went ahead while replica 1 held the record"
        refused = await asyncio.wait_for(racing, 10)
        assert "samples: the correction would take usage 'u' to -20" in refused["fix-2"]
        net = {g.meters["samples"] for g in await store1.groups(UsageFilter("acme"), [], "day")}
        assert net == {40}
    finally:
        await db1.dispose()
        await db2.dispose()


async def _waiting_on_a_lock(db: Database) -> bool:
    async with db.engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
    return bool(waiting)


@pytest.mark.parametrize("size", ["minute", "hour", "day", "month"])
async def test_usage_groups_are_summed_by_the_database_per_window(db_url: str, size: str) -> None:
    """The database groups and sums (SQLite by datetime-text prefix, PostgreSQL by date_trunc
    in UTC); the result must be the per-record rule: a record counts in the window it ended in,
    with records on each side of every boundary, and sums exact past 2**53."""
    db, store = await _store(db_url)
    ends = [
        datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 0, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 1, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 59, 59, tzinfo=UTC),
        datetime(2026, 12, 1, 1, 0, tzinfo=UTC),
        datetime(2026, 12, 2, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
    ]
    try:
        expected: dict[tuple[str, datetime], list[int]] = {}
        for i, ended in enumerate(ends):
            chip = "mlu370-x8" if i % 3 else "ascend-910b2"
            tokens = 2**53 + i
            await _put(store, f"w{i}", ended, chip=chip, tokens_in=tokens)
            key = (chip, _truncate(ended, size))
            records, total = expected.get(key, [0, 0])
            expected[key] = [records + 1, total + tokens]
        groups = await store.groups(UsageFilter("acme"), ["chip", "window"], size)
        got = {
            (g.chip, g.window_start.ToDatetime(tzinfo=UTC)): [g.records, g.meters["input_tokens"]]
            for g in groups
        }
        assert got == expected
        assert [(g.chip, g.window_start.ToDatetime(tzinfo=UTC)) for g in groups] == sorted(got)
        [everything] = await store.groups(UsageFilter("acme"), [], size)
        assert everything.records == len(ends)
        assert everything.meters["input_tokens"] == sum(2**53 + i for i in range(len(ends)))
        assert await store.groups(UsageFilter("nobody"), [], size) == []
    finally:
        await db.dispose()


def _truncate(when: datetime, size: str) -> datetime:
    if size == "minute":
        return when.replace(second=0, microsecond=0)
    if size == "hour":
        return when.replace(minute=0, second=0, microsecond=0)
    if size == "day":
        return when.replace(hour=0, minute=0, second=0, microsecond=0)
    return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class _FailingFor(UsageStore):
    """A store whose finalization of one tenant's invoices fails (a database hiccup on that
    tenant's transaction, or a book that cannot price its usage), until told otherwise."""

    def __init__(self, db: Database, tenant: str) -> None:
        super().__init__(db)
        self.failing: str | None = tenant

    async def finalize(self, tenant: str, month: Month, build) -> bytes | None:
        if tenant == self.failing:
            raise RuntimeError(f"finalizing {tenant}/{month} failed")
        return await super().finalize(tenant, month, build)


async def test_one_tenants_failing_finalization_does_not_hold_back_the_others(
    db_url: str,
) -> None:
    """The finalizer skips a tenant whose invoice cannot be closed: every other tenant's due
    invoices become final in the same turn (whichever order the tenants come in), the failing
    tenant's stay drafts, and a later turn closes them once the cause is gone."""
    db = Database(db_url)
    await migrate(db, MIGRATIONS)
    store = _FailingFor(db, "acme")
    try:
        invoicer = Invoicer(
            store,
            [default_price_book()],
            timedelta(days=1),
            clock=lambda: datetime(2026, 12, 3, tzinfo=UTC),
        )
        # acme's usage is the older, so a finalizer walking tenants oldest first meets it first.
        await _put(store, "a1", datetime(2026, 10, 20, tzinfo=UTC), busy_device_us=HOUR_US)
        await _put(store, "a2", datetime(2026, 11, 20, tzinfo=UTC), busy_device_us=HOUR_US)
        await _put(
            store,
            "g1",
            datetime(2026, 11, 21, tzinfo=UTC),
            tenant="globex",
            busy_device_us=HOUR_US,
        )
        assert await invoicer.finalize_due() == ["globex/2026-11"]
        globex = await invoicer.invoice("globex", NOV)
        assert globex is not None and globex.status == metering_pb2.INVOICE_STATUS_FINAL
        assert globex.total == "1.440000"
        acme = await invoicer.invoice("acme", Month(2026, 10))
        assert acme is not None and acme.status == metering_pb2.INVOICE_STATUS_DRAFT
        assert await store.final_invoices("acme") == []

        store.failing = None  # the cause is gone: the next turn closes acme's, oldest first
        assert await invoicer.finalize_due() == ["acme/2026-10", "acme/2026-11"]
        assert await invoicer.finalize_due() == []
        on_it, _ = await store.query(UsageFilter("*", invoice_id="globex/2026-11"), 0, 10)
        assert [r.usage_id for r in on_it] == ["g1"]
    finally:
        await db.dispose()
