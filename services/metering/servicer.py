"""gRPC servicer: the public MeteringService. Every query sees the caller's tenant only."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pocgrid.price_book import SourcedBook, to_proto
from pocgrid.v1 import common_pb2, metering_pb2, metering_pb2_grpc
from services.core import rpc_context
from services.core import validation as v
from services.core.errors import InvalidArgument, NotFound, Unauthenticated
from services.metering.store import UsageFilter, UsageStore


def caller_tenant() -> str:
    """The tenant the gateway authenticated; a call that bypassed the gateway has none."""
    tenant = rpc_context.current_tenant()
    if not tenant:
        raise Unauthenticated("no tenant: call through the gateway")
    return tenant


def _time(field: str, ts: Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def _window(
    request: metering_pb2.ListUsageRequest | metering_pb2.GetUsageSummaryRequest,
) -> tuple[datetime | None, datetime | None]:
    since = _time("since", request.since, request.HasField("since"))
    until = _time("until", request.until, request.HasField("until"))
    if since is not None and until is not None and until <= since:
        raise InvalidArgument("until", "must be after since")
    return since, until


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, store: UsageStore, books: tuple[SourcedBook, ...]) -> None:
        self._store = store
        self._books = sorted(books, key=lambda b: b.book.effective_from)

    def book_at(self, when: datetime) -> SourcedBook:
        current = [b for b in self._books if b.book.effective_from <= when]
        if not current:
            raise NotFound("price book", f"in force at {when.isoformat()}")
        return current[-1]

    async def ListUsage(
        self, request: metering_pb2.ListUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ListUsageResponse:
        tenant = caller_tenant()
        v.optional_text("job_id", request.job_id, 128)
        v.optional_text("chip", request.chip, 64)
        since, until = _window(request)
        size = v.page_size("page.page_size", request.page.page_size)
        offset = v.page_offset("page.page_token", request.page.page_token)
        where = UsageFilter(tenant, request.job_id, request.chip, since, until)
        records, total = await self._store.query(where, offset, size)
        next_token = str(offset + size) if offset + size < total else ""
        return metering_pb2.ListUsageResponse(
            records=records,
            page=common_pb2.PageResponse(next_page_token=next_token, total_size=total),
        )

    async def GetUsageSummary(
        self, request: metering_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetUsageSummaryResponse:
        tenant = caller_tenant()
        since, until = _window(request)
        by_chip = await self._store.summary(UsageFilter(tenant, since=since, until=until))
        return metering_pb2.GetUsageSummaryResponse(tenant=tenant, by_chip=by_chip)

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
