"""Persistence and queries of usage records, tenants and final invoices (metering's own
database)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import and_, func, literal_column, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from pocgrid.meters import METERS
from pocgrid.price_book import SourcedBook, sourced_from_proto, to_proto
from pocgrid.v1 import metering_pb2
from services.core.config import ConfigError
from services.core.storage import Database, db_operation, utc
from services.core.usage import (
    AMOUNT_FIELDS,
    EVENT_TO_RECORD,
    RECORD_SCALARS,
    RECORD_TIMES,
    copy_fields,
)
from services.metering.invoicing import Month
from services.metering.tables import (
    IS_CORRECTION,
    InvoiceRow,
    PriceBookRow,
    TenantRow,
    UsageRow,
)

ALL_TENANTS: Final = "*"
#: Record fields a stored row fills from its own columns (invoice_id may be NULL).
_ROW_SCALARS: Final = tuple(n for n in RECORD_SCALARS if n != "invoice_id")
#: Columns a correction takes from the usage it corrects: it lands where that usage did.
_FROM_ORIGINAL: Final = ("chip", "node_id", "job_id", "model", "devices", "started_at", "ended_at")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    tenant: str
    """One tenant, or ALL_TENANTS (admin keys only; the servicer checks)."""
    job_id: str = ""
    chip: str = ""
    since: datetime | None = None
    """Records that ended at or after this."""
    until: datetime | None = None
    """Records that ended before this."""
    invoice_id: str = ""

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.tenant != ALL_TENANTS:
            clauses.append(UsageRow.tenant == self.tenant)
        if self.job_id:
            clauses.append(UsageRow.job_id == self.job_id)
        if self.chip:
            clauses.append(UsageRow.chip == self.chip)
        if self.since is not None:
            clauses.append(UsageRow.ended_at >= self.since)
        if self.until is not None:
            clauses.append(UsageRow.ended_at < self.until)
        if self.invoice_id:
            clauses.append(UsageRow.invoice_id == self.invoice_id)
        return clauses


WINDOWS: Final = ("minute", "hour", "day", "month")
#: A window's start as the prefix of SQLite's datetime text (see UsageStore._window): its
#: format and length.
_SQLITE_WINDOWS: Final = {
    "minute": ("%Y-%m-%d %H:%M", 16),
    "hour": ("%Y-%m-%d %H", 13),
    "day": ("%Y-%m-%d", 10),
    "month": ("%Y-%m", 7),
}


def _window_start(value: Any, size: str) -> datetime:
    """A window start as the database returned it: a datetime (PostgreSQL), or SQLite's text."""
    if isinstance(value, datetime):
        return utc(value)
    return datetime.strptime(str(value), _SQLITE_WINDOWS[size][0]).replace(tzinfo=UTC)


USAGE_VALUES: Final = ("usage_id", *EVENT_TO_RECORD, "started_at", "ended_at")
"""A usage record as ``UsageStore.record_batch`` takes it in ``values``: a tuple in this order
(the table's), times as integer microseconds since the epoch. Ingest builds these straight
from events: a dict per event, then a tuple from it, cost more than the checks."""


class UsageStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect
        self._insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        # Ingest writes through the driver's own executemany: SQLAlchemy's per-row parameter
        # processing cost more than the database's insert. Values go as the column types
        # would bind them: only SQLite's datetimes need binding (SQLAlchemy keeps them as
        # text), and they come last so a row's other values are taken in one C call.
        # invoice_id is left out: it is NULL until a final invoice takes the record.
        table = UsageRow.__table__
        times = ("started_at", "ended_at", "recorded_at")
        plain = tuple(c.name for c in table.columns if c.name not in (*times, "invoice_id"))
        unbound = [
            c.name
            for c in table.columns
            if c.name not in times and c.type.dialect_impl(dialect).bind_processor(dialect)
        ]
        if unbound:
            raise RuntimeError(f"no fast ingest for columns that need binding: {unbound}")
        if plain != USAGE_VALUES[:-2]:
            raise RuntimeError(f"usage columns {plain} are not USAGE_VALUES {USAGE_VALUES}")
        self._as_values = itemgetter(*USAGE_VALUES)
        self._time_param: Callable[[int], Any] = (
            sqlite_datetime if dialect.name == "sqlite" else from_epoch_us
        )
        columns = self._columns = (*plain, *times)
        names = ", ".join(columns)
        # SQLite: the driver's executemany. PostgreSQL: a batch is COPYed into a temporary
        # table of the connection (emptied at each commit) and moved with one INSERT ...
        # SELECT. Measured here, 1,000-row batches cost the server 16-19 us of CPU per row
        # this way against 26-30 through executemany (an execution per row), and the driver
        # 10-11 against 11-15.
        self._copy = dialect.name == "postgresql"
        if self._copy:
            staging = "usage_records_in"
            self._staging = staging
            self._stage_sql = (
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
                f"(LIKE {UsageRow.__tablename__} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._insert_sql = (
                f"INSERT INTO {UsageRow.__tablename__} ({names}) SELECT {names} FROM {staging} "
                "ON CONFLICT (usage_id) DO NOTHING"
            )
        elif dialect.paramstyle == "qmark":
            marks = ", ".join("?" for _ in columns)
            self._insert_sql = (
                f"INSERT INTO {UsageRow.__tablename__} ({names}) VALUES ({marks}) "
                "ON CONFLICT (usage_id) DO NOTHING"
            )
        else:
            raise RuntimeError(f"no fast ingest for {dialect.name} ({dialect.paramstyle})")

    # -- ingest ---------------------------------------------------------------------------
    @db_operation
    async def record(self, record: metering_pb2.UsageRecord) -> bool:
        """Store one record (tests, tools); False when its usage_id is already stored."""
        values: dict[str, Any] = {name: getattr(record, name) for name in _ROW_SCALARS}
        for name in RECORD_TIMES:
            values[name] = getattr(record, name).ToDatetime(tzinfo=UTC)
        values["recorded_at"] = datetime.now(UTC)
        stmt = self._insert(UsageRow).values(**values).on_conflict_do_nothing()
        async with self._db.session() as session, session.begin():
            result = await session.execute(stmt)
        return bool(getattr(result, "rowcount", 0))

    @db_operation
    async def record_batch(
        self, rows: Sequence[dict[str, Any]], values: Sequence[tuple[Any, ...]] = ()
    ) -> dict[str, str]:
        """Store ``rows`` (column -> value, started_at and ended_at as integer microseconds
        since the epoch; one per usage event or correction) and ``values`` (usage that is no
        correction, as ``USAGE_VALUES`` tuples) in one transaction, each at most once (INSERT
        ... ON CONFLICT DO NOTHING on the usage id). Returns the corrections refused,
        usage_id -> why; everything else is committed when this returns."""
        async with self._db.session() as session, session.begin():
            return await self.record_in(session, rows, values)

    async def record_in(
        self,
        session: Any,
        rows: Sequence[dict[str, Any]],
        values: Sequence[tuple[Any, ...]] = (),
    ) -> dict[str, str]:
        """``record_batch`` inside the caller's transaction on ``session`` (committed by it)."""
        refused: dict[str, str] = {}
        now = datetime.now(UTC)
        conn = await session.connection()
        usage = [*values, *(self._as_values(r) for r in rows if not r["corrects"])]
        if usage:
            await self._insert_usage(conn, self._params(usage, now))
        corrections = [r for r in rows if r["corrects"]]
        if corrections:
            # After the usage above: a correction may follow its usage in one batch, and this
            # transaction already sees it.
            refused = await _check_corrections(session, corrections, self._db.is_sqlite)
            keep = [r for r in corrections if r["usage_id"] not in refused]
            if keep:
                params = self._params([self._as_values(r) for r in keep], now)
                await self._insert_usage(conn, params)
        return refused

    async def _insert_usage(self, conn: Any, params: list[tuple[Any, ...]]) -> None:
        """Insert rows of ``self._columns`` values, each at most once, in ``conn``'s
        transaction."""
        if not self._copy:
            await conn.exec_driver_sql(self._insert_sql, params)
            return
        # Through SQLAlchemy first: it begins the transaction on the driver's connection, so
        # the COPY below is inside it (alone, asyncpg would commit it at once, and the commit
        # would empty the staging table before the move).
        await conn.exec_driver_sql(self._stage_sql)
        raw = (await conn.get_raw_connection()).driver_connection
        await raw.copy_records_to_table(self._staging, records=params, columns=self._columns)
        await conn.exec_driver_sql(self._insert_sql)

    def _params(self, values: Sequence[tuple[Any, ...]], now: datetime) -> list[tuple[Any, ...]]:
        time_param = self._time_param
        recorded = time_param(epoch_us(now))
        return [(*v[:-2], time_param(v[-2]), time_param(v[-1]), recorded) for v in values]

    # -- price books ----------------------------------------------------------------------
    @db_operation
    async def keep_books(self, books: Sequence[SourcedBook]) -> list[SourcedBook]:
        """Store each of ``books`` not stored yet, refuse one whose version is stored with other
        contents, and return every stored version (oldest first): what metering prices with."""
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            for sourced in books:
                document = to_proto(sourced).SerializeToString(deterministic=True)
                # Insert-if-absent, then compare: replicas started together each store the
                # same book, and a read-then-insert let the slower one fail on the key.
                await session.execute(
                    self._insert(PriceBookRow)
                    .values(
                        version=sourced.book.version,
                        effective_from=sourced.book.effective_from,
                        stored_at=now,
                        document=document,
                    )
                    .on_conflict_do_nothing(index_elements=["version"])
                )
                stored_document = await session.scalar(
                    select(PriceBookRow.document).where(
                        PriceBookRow.version == sourced.book.version
                    )
                )
                if stored_document != document:
                    raise ConfigError(
                        f"price book {sourced.book.version!r} differs from the version stored "
                        "in metering's database: a changed book needs a new version"
                    )
            stored = await session.scalars(
                select(PriceBookRow.document).order_by(PriceBookRow.effective_from)
            )
            return [sourced_from_proto(metering_pb2.PriceBook.FromString(d)) for d in stored]

    # -- tenants --------------------------------------------------------------------------
    @db_operation
    async def add_tenants(self, names: Iterable[str]) -> frozenset[str]:
        """Make ``names`` known (kept forever); returns every tenant known."""
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            values = [{"name": n, "added_at": now} for n in sorted(set(names))]
            if values:
                await session.execute(
                    self._insert(TenantRow).on_conflict_do_nothing(index_elements=["name"]),
                    values,
                )
            return frozenset(await session.scalars(select(TenantRow.name)))

    # -- queries --------------------------------------------------------------------------
    @db_operation
    async def query(
        self, where: UsageFilter, offset: int, limit: int
    ) -> tuple[list[metering_pb2.UsageRecord], int]:
        clauses = where.where()
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(UsageRow).where(*clauses))
            rows = await session.scalars(
                select(UsageRow)
                .where(*clauses)
                .order_by(UsageRow.ended_at, UsageRow.usage_id)
                .offset(offset)
                .limit(limit)
            )
            return [row_to_record(r) for r in rows], int(total or 0)

    @db_operation
    async def get(self, usage_id: str) -> metering_pb2.UsageRecord | None:
        async with self._db.session() as session:
            row = await session.get(UsageRow, usage_id)
            return None if row is None else row_to_record(row)

    @db_operation
    async def summary(self, where: UsageFilter) -> list[metering_pb2.ChipUsage]:
        sums = [func.coalesce(func.sum(getattr(UsageRow, name)), 0) for name in AMOUNT_FIELDS]
        query = (
            select(UsageRow.chip, func.count(), *sums)
            .where(*where.where())
            .group_by(UsageRow.chip)
            .order_by(UsageRow.chip)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        out: list[metering_pb2.ChipUsage] = []
        for chip, count, *amounts in rows:
            usage = metering_pb2.ChipUsage(chip=chip, records=int(count))
            for name, value in zip(AMOUNT_FIELDS, amounts, strict=True):
                # SQL sums of integers may come back as Decimal: exact, made int here.
                setattr(usage, name, int(value))
            out.append(usage)
        return out

    @db_operation
    async def groups(
        self, where: UsageFilter, group_by: Sequence[str], window_size: str
    ) -> list[metering_pb2.UsageGroup]:
        """Usage summed per group (any of tenant, chip, job, window), exact integers: grouped
        and summed by the database, which returns one row per group, not one per record (a
        month of a busy tenant is millions of them)."""
        windowed = "window" in group_by
        if windowed and window_size not in WINDOWS:
            raise ValueError(f"window size {window_size!r} is not one of {WINDOWS}")
        named = {"tenant": UsageRow.tenant, "chip": UsageRow.chip, "job": UsageRow.job_id}
        keys: list[Any] = [column for name, column in named.items() if name in group_by]
        if windowed:
            keys.append(self._window(window_size))
        sums = [
            func.coalesce(func.sum(getattr(UsageRow, m.source_field)), 0) for m in METERS.values()
        ]
        query = select(*keys, func.count(), *sums).where(*where.where())
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        out: list[metering_pb2.UsageGroup] = []
        for row in rows:
            values = iter(row)
            group = metering_pb2.UsageGroup(
                tenant=str(next(values)) if "tenant" in group_by else "",
                chip=str(next(values)) if "chip" in group_by else "",
                job_id=str(next(values)) if "job" in group_by else "",
            )
            if windowed:
                group.window_start.FromDatetime(_window_start(next(values), window_size))
            group.records = int(next(values))
            if not group.records:
                continue  # no GROUP BY: one row of zeros when no record matched
            for name, value in zip(METERS, values, strict=True):
                # SQL sums of integers may come back as Decimal: exact, made int here.
                group.meters[name] = int(value)
            out.append(group)
        return out

    def _window(self, size: str) -> Any:
        """The start of the ``size`` window each record ended in, computed by the database."""
        if self._db.is_sqlite:
            # SQLite keeps UTC datetimes as "YYYY-MM-DD HH:MM:SS.ffffff": a window is a prefix.
            return func.substr(UsageRow.ended_at, 1, _SQLITE_WINDOWS[size][1])
        # date_trunc in UTC whatever the session's time zone; the unit and zone as literals,
        # so PostgreSQL groups by one expression rather than by differently bound parameters.
        return func.date_trunc(
            literal_column(f"'{size}'"), UsageRow.ended_at, literal_column("'UTC'")
        )

    # -- invoices -------------------------------------------------------------------------
    @db_operation
    async def unbilled(
        self, tenant: str, before: datetime | None, since: datetime | None
    ) -> list[Any]:
        """The tenant's records on no final invoice that ended before ``before`` and at or
        after ``since`` (either bound may be None)."""
        clauses = [UsageRow.tenant == tenant, UsageRow.invoice_id.is_(None)]
        if before is not None:
            clauses.append(UsageRow.ended_at < before)
        if since is not None:
            clauses.append(UsageRow.ended_at >= since)
        async with self._db.session() as session:
            return [_aware(r) for r in await session.scalars(select(UsageRow).where(*clauses))]

    @db_operation
    async def billed(self, tenant: str, months: Iterable[Month]) -> list[Any]:
        """The tenant's records on final invoices that ended in any of ``months``: what an
        adjustment of those months is rated against."""
        async with self._db.session() as session:
            return await _billed(session, tenant, months)

    @db_operation
    async def oldest_unbilled(self) -> list[tuple[str, datetime]]:
        """Per tenant with records on no final invoice, when its oldest one ended."""
        query = (
            select(UsageRow.tenant, func.min(UsageRow.ended_at))
            .where(UsageRow.invoice_id.is_(None))
            .group_by(UsageRow.tenant)
        )
        async with self._db.session() as session:
            return [(t, utc(m)) for t, m in (await session.execute(query)).all()]

    @db_operation
    async def last_final(self, tenant: str) -> Month | None:
        async with self._db.session() as session:
            period = await session.scalar(
                select(func.max(InvoiceRow.period)).where(InvoiceRow.tenant == tenant)
            )
        return None if period is None else Month.parse(period)

    @db_operation
    async def final_invoice(self, invoice_id: str) -> bytes | None:
        async with self._db.session() as session:
            row = await session.get(InvoiceRow, invoice_id)
            return None if row is None else row.document

    @db_operation
    async def final_invoices(self, tenant: str) -> list[bytes]:
        query = select(InvoiceRow.document).where(InvoiceRow.tenant == tenant)
        async with self._db.session() as session:
            return list(await session.scalars(query.order_by(InvoiceRow.period)))

    @db_operation
    async def finalize(self, tenant: str, month: Month, build: Any) -> bytes | None:
        """Close ``tenant``'s invoice of ``month``: in one transaction, take every record on no
        final invoice that ended before the month's end, build the document from exactly those
        (``build(rows, billed) -> bytes``, ``billed``: the tenant's records on earlier final
        invoices that ended in the months ``rows`` adjust) and store it. Marking first, then
        reading what was marked, means a record committed meanwhile is either on this invoice
        or on the next, never counted and missed. None when another replica finalized it first."""
        invoice_id = f"{tenant}/{month}"
        try:
            async with self._db.session() as session, session.begin():
                if await session.get(InvoiceRow, invoice_id) is not None:
                    return None
                await session.execute(
                    update(UsageRow)
                    .where(
                        UsageRow.tenant == tenant,
                        UsageRow.invoice_id.is_(None),
                        UsageRow.ended_at < month.end,
                    )
                    .values(invoice_id=invoice_id)
                )
                rows = [
                    _aware(r)
                    for r in await session.scalars(
                        select(UsageRow).where(UsageRow.invoice_id == invoice_id)
                    )
                ]
                adjusted = {Month.of(r.ended_at) for r in rows if r.ended_at < month.start}
                billed = [
                    r
                    for r in await _billed(session, tenant, adjusted)
                    if r.invoice_id != invoice_id
                ]
                document: bytes = build(rows, billed)
                session.add(
                    InvoiceRow(
                        invoice_id=invoice_id,
                        tenant=tenant,
                        period=str(month),
                        finalized_at=datetime.now(UTC),
                        document=document,
                    )
                )
            return document
        except IntegrityError:
            return None  # another replica stored it first; its document stands


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


def epoch_us(when: datetime) -> int:
    """``when`` (naive means UTC) as integer microseconds since the epoch, exactly."""
    return (utc(when) - _EPOCH) // _US


def from_epoch_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@lru_cache(maxsize=4096)
def _sqlite_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def sqlite_datetime(us: int) -> str:
    """Microseconds since the epoch as SQLAlchemy's SQLite DATETIME stores them
    ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), without a datetime: SQLAlchemy's bind processor
    builds a dict per value and formats it, at several times the cost of the insert. Events
    of one batch mostly share their seconds, hence the cache."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_sqlite_second(seconds)}.{micros:06d}"


async def _billed(session: Any, tenant: str, months: Iterable[Month]) -> list[UsageRow]:
    spans = [
        and_(UsageRow.ended_at >= m.start, UsageRow.ended_at < m.end) for m in sorted(set(months))
    ]
    if not spans:
        return []
    query = select(UsageRow).where(
        UsageRow.tenant == tenant, UsageRow.invoice_id.is_not(None), or_(*spans)
    )
    return [_aware(r) for r in await session.scalars(query)]


def _aware(row: UsageRow) -> UsageRow:
    # SQLite hands back naive datetimes; invoices compare them with aware ones.
    row.started_at = utc(row.started_at)
    row.ended_at = utc(row.ended_at)
    return row


async def _check_corrections(
    session: Any, corrections: Sequence[dict[str, Any]], sqlite: bool
) -> dict[str, str]:
    """Refuse corrections of unknown usage, of another tenant's usage, of a correction, or
    that would take any amount of the corrected usage below zero; fill the rest in from the
    usage they correct (same chip, job and event time: they land in its window)."""
    ids = [c["usage_id"] for c in corrections]
    targets = {c["corrects"] for c in corrections}
    # The usage corrected is locked (SELECT ... FOR UPDATE) before its corrections are summed:
    # two corrections of one record committed at once (two replicas, or an event and a
    # CorrectUsage call) would otherwise each see the other's delta missing and together take
    # it below zero. The second waits for the first to commit, then sums it in (PostgreSQL
    # reads committed rows per statement). In id order, so two batches lock alike and never
    # deadlock each other. SQLite has no row locks, only one writer at a time (the Database
    # gate in a process, its file lock across processes).
    if sqlite:
        # pysqlite begins a transaction at its first write, so a SELECT before one reads what
        # was committed then: take SQLite's one write lock first, by a write that changes
        # nothing, and read after whoever held it committed.
        await session.execute(
            update(UsageRow)
            .where(UsageRow.usage_id.in_(targets))
            .values(corrects=UsageRow.corrects)
            .execution_options(synchronize_session=False)
        )
    locked = select(UsageRow).where(UsageRow.usage_id.in_(targets)).order_by(UsageRow.usage_id)
    originals = {r.usage_id: r for r in await session.scalars(locked.with_for_update())}
    stored = set(await session.scalars(select(UsageRow.usage_id).where(UsageRow.usage_id.in_(ids))))
    sums = [func.coalesce(func.sum(getattr(UsageRow, n)), 0) for n in AMOUNT_FIELDS]
    corrected = {
        target: dict(zip(AMOUNT_FIELDS, (int(v) for v in values), strict=True))
        for target, *values in (
            await session.execute(
                select(UsageRow.corrects, *sums)
                .where(UsageRow.corrects.in_(targets), text(IS_CORRECTION))
                .group_by(UsageRow.corrects)
            )
        ).all()
    }
    refused: dict[str, str] = {}
    for c in corrections:
        original = originals.get(c["corrects"])
        why = ""
        if original is None:
            why = f"corrects: no usage {c['corrects']!r} is stored (a correction follows it)"
        elif original.corrects:
            why = f"corrects: {c['corrects']!r} is itself a correction; correct the usage"
        elif original.tenant != c["tenant"]:
            why = f"corrects: usage {c['corrects']!r} is not tenant {c['tenant']!r}'s"
        if why:
            refused[c["usage_id"]] = why
            continue
        assert original is not None
        for name in _FROM_ORIGINAL:
            c[name] = getattr(original, name)
        for name in ("started_at", "ended_at"):
            c[name] = epoch_us(c[name])  # as record_batch takes times
        if c["usage_id"] in stored:
            continue  # a redelivery: its delta is already in the sums; the insert drops it
        net = corrected.setdefault(c["corrects"], dict.fromkeys(AMOUNT_FIELDS, 0))
        after = {n: getattr(original, n) + net[n] + c[n] for n in AMOUNT_FIELDS}
        negative = [n for n, v in after.items() if v < 0]
        if negative:
            refused[c["usage_id"]] = (
                f"{negative[0]}: the correction would take usage {c['corrects']!r} to "
                f"{after[negative[0]]} (< 0)"
            )
            continue
        for n in AMOUNT_FIELDS:
            net[n] += c[n]
    return refused


def row_to_record(row: UsageRow) -> metering_pb2.UsageRecord:
    record = metering_pb2.UsageRecord(invoice_id=row.invoice_id or "")
    copy_fields(row, record, _ROW_SCALARS)
    for name in RECORD_TIMES:
        getattr(record, name).FromDatetime(utc(getattr(row, name)))
    return record
