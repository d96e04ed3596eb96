"""gRPC servicer: the public MeteringService. A tenant sees its own usage and invoices only;
an admin key (``x-pocgrid-role: admin``, set by the gateway) may name any tenant, or all."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.meters import METERS
from pocgrid.price_book import SourcedBook, to_proto
from pocgrid.v1 import common_pb2, metering_pb2, metering_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.metering.invoices import Invoicer
from services.metering.invoicing import Month
from services.metering.store import ALL_TENANTS, WINDOWS, UsageFilter, UsageStore

GROUPS = ("tenant", "chip", "job", "window")


def caller_tenant() -> str:
    """The tenant the gateway authenticated; a call that bypassed the gateway has none."""
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated("no tenant: call through the gateway")
    return tenant


def tenant_scope(requested: str, *, allow_all: bool = True) -> str:
    """Which tenant a query reads: the caller's own unless an admin key names another."""
    own = caller_tenant()
    if not requested or requested == own:
        return own
    if not rpc_context.current_is_admin():
        raise PermissionDenied(
            f"tenant: {requested!r} is not yours; only an admin key reads other tenants"
        )
    if requested == ALL_TENANTS:
        if not allow_all:
            raise InvalidArgument("tenant", "must name one tenant ('*' is not allowed here)")
        return ALL_TENANTS
    v.require_text("tenant", requested, 128)
    return requested


def _time(field: str, ts: Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def _window(
    request: metering_pb2.ListUsageRequest
    | metering_pb2.GetUsageSummaryRequest
    | metering_pb2.QueryUsageRequest,
) -> tuple[datetime | None, datetime | None]:
    since = _time("since", request.since, request.HasField("since"))
    until = _time("until", request.until, request.HasField("until"))
    if since is not None and until is not None and until <= since:
        raise InvalidArgument("until", "must be after since")
    return since, until


def _month(text: str, now: datetime) -> Month:
    if not text:
        return Month.of(now)
    try:
        return Month.parse(text)
    except ValueError:
        raise InvalidArgument("period", "must be YYYY-MM, e.g. 2026-11") from None


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(
        self, store: UsageStore, books: tuple[SourcedBook, ...], invoicer: Invoicer
    ) -> None:
        self._store = store
        self._books = sorted(books, key=lambda b: b.book.effective_from)
        self._invoicer = invoicer

    def book_at(self, when: datetime) -> SourcedBook:
        current = [b for b in self._books if b.book.effective_from <= when]
        if not current:
            raise NotFound("price book", f"in force at {when.isoformat()}")
        return current[-1]

    async def ListUsage(
        self, request: metering_pb2.ListUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ListUsageResponse:
        tenant = tenant_scope(request.tenant)
        v.optional_text("job_id", request.job_id, 128)
        v.optional_text("chip", request.chip, 64)
        v.optional_text("invoice_id", request.invoice_id, 200)
        since, until = _window(request)
        size = v.page_size("page.page_size", request.page.page_size)
        offset = v.page_offset("page.page_token", request.page.page_token)
        where = UsageFilter(tenant, request.job_id, request.chip, since, until, request.invoice_id)
        records, total = await self._store.query(where, offset, size)
        next_token = str(offset + size) if offset + size < total else ""
        return metering_pb2.ListUsageResponse(
            records=records,
            page=common_pb2.PageResponse(next_page_token=next_token, total_size=total),
        )

    async def GetUsageSummary(
        self, request: metering_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetUsageSummaryResponse:
        tenant = tenant_scope(request.tenant)
        since, until = _window(request)
        by_chip = await self._store.summary(UsageFilter(tenant, since=since, until=until))
        return metering_pb2.GetUsageSummaryResponse(tenant=tenant, by_chip=by_chip)

    async def QueryUsage(
        self, request: metering_pb2.QueryUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.QueryUsageResponse:
        tenant = tenant_scope(request.tenant)
        v.optional_text("job_id", request.job_id, 128)
        v.optional_text("chip", request.chip, 64)
        for i, name in enumerate(request.group_by):
            if name not in GROUPS:
                raise InvalidArgument(f"group_by[{i}]", f"must be one of {', '.join(GROUPS)}")
        if "window" in request.group_by and request.window_size not in WINDOWS:
            raise InvalidArgument(
                "window_size", f"must be one of {', '.join(WINDOWS)} when grouping by window"
            )
        since, until = _window(request)
        where = UsageFilter(tenant, request.job_id, request.chip, since, until)
        groups = await self._store.groups(where, list(request.group_by), request.window_size)
        return metering_pb2.QueryUsageResponse(groups=groups)

    async def GetPriceBook(
        self, request: metering_pb2.GetPriceBookRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetPriceBookResponse:
        # Prices are public to every authenticated caller; only the gateway's key check applies.
        caller_tenant()
        chip = v.optional_text("chip", request.chip, 64)
        at = _time("at", request.at, request.HasField("at")) or datetime.now(UTC)
        sourced = self.book_at(at)
        if chip and chip not in sourced.cards:
            raise NotFound("chip", chip, "the price book lists the catalogue's chip types")
        return metering_pb2.GetPriceBookResponse(book=to_proto(sourced, chip))

    async def GetInvoice(
        self, request: metering_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetInvoiceResponse:
        tenant = tenant_scope(request.tenant, allow_all=False)
        month = _month(request.period, datetime.now(UTC))
        try:
            invoice = await self._invoicer.invoice(tenant, month)
        except LookupError as exc:
            # A book with no price for a chip and meter the usage has (usage from before the
            # first book is priced by the earliest one: invoicing's docstring).
            raise FailedPrecondition(f"period: {exc}; add that price to a new book") from exc
        if invoice is None:
            raise NotFound("invoice", f"{tenant}/{month}", "that month had no usage when it closed")
        return metering_pb2.GetInvoiceResponse(invoice=invoice)

    async def ListInvoices(
        self, request: metering_pb2.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ListInvoicesResponse:
        tenant = tenant_scope(request.tenant, allow_all=False)
        return metering_pb2.ListInvoicesResponse(invoices=await self._invoicer.invoices(tenant))

    async def CorrectUsage(
        self, request: metering_pb2.CorrectUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.CorrectUsageResponse:
        caller_tenant()
        if not rpc_context.current_is_admin():
            raise PermissionDenied("CorrectUsage needs an admin key")
        correction_id = v.require_id("correction_id", request.correction_id)
        corrects = v.require_text("corrects", request.corrects, 160)
        if request.meter not in METERS:
            raise InvalidArgument("meter", f"must be one of {', '.join(METERS)}")
        if request.delta == 0:
            raise InvalidArgument("delta", "must not be 0")
        v.optional_text("reason", request.reason, 256)
        original = await self._store.get(corrects)
        if original is None:
            raise NotFound("usage", corrects)
        if original.corrects:
            raise FailedPrecondition(
                f"corrects: {corrects!r} is itself a correction; correct the usage "
                f"{original.corrects!r}"
            )
        usage_id = f"correction:{correction_id}"
        row = {
            "usage_id": usage_id,
            "tenant": original.tenant,
            "corrects": corrects,
            "reason": request.reason,
            **{m.source_field: 0 for m in METERS.values()},
        }
        row[METERS[request.meter].source_field] = request.delta
        refused = await self._store.record_batch([row])
        if usage_id in refused:
            raise FailedPrecondition(refused[usage_id])
        record = await self._store.get(usage_id)
        assert record is not None
        if (
            record.corrects != corrects
            or getattr(record, METERS[request.meter].source_field) != request.delta
        ):
            raise FailedPrecondition(
                f"correction_id: {correction_id!r} was already used for another correction"
            )
        return metering_pb2.CorrectUsageResponse(record=record)
