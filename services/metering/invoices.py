"""Drafts and final invoices: which month's invoice a record is on, when a draft becomes
final, and the Invoice message (the rules are in ``invoicing``'s docstring).

A month's invoice is a *draft* until its end plus the grace period (``invoice_grace_s``): late
usage that arrives meanwhile lands on it. Then the finalizer (a loop in the service, and
idempotent, so any replica may run it) closes it: the records it takes are marked with its id in
the same transaction that stores it, and it never changes again. Usage for that month arriving
later is on no final invoice, so it goes to the next month's invoice as an adjustment line.

The first month not yet final is ``F`` (the month after the last final one): its draft carries
the adjustments. With no final invoice yet there is nothing to adjust.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pocgrid.meters import METERS
from pocgrid.price_book import SourcedBook
from pocgrid.pricing import round_money
from pocgrid.v1 import metering_pb2
from services.core.logging import get_logger
from services.metering.invoicing import Composed, Month, compose
from services.metering.store import UsageStore

log = get_logger()

Clock = Callable[[], datetime]


def _money(value: Any) -> str:
    return format(value, "f")


def invoice_message(
    tenant: str,
    month: Month,
    composed: Composed,
    status: metering_pb2.InvoiceStatus.ValueType,
    final_at: datetime,
) -> metering_pb2.Invoice:
    msg = metering_pb2.Invoice(
        invoice_id=f"{tenant}/{month}",
        tenant=tenant,
        period=str(month),
        status=status,
        currency=composed.currency,
        total=_money(composed.total),
        rental_total=_money(composed.rental_total),
        saving=_money(composed.rental_total - composed.total),
        price_versions=composed.price_versions,
        records=composed.records,
    )
    msg.final_at.FromDatetime(final_at)
    msg.lines.extend(
        metering_pb2.InvoiceLine(
            chip=line.chip,
            meter=line.meter,
            unit=METERS[line.meter].unit.value,
            quantity=line.quantity,
            amount=_money(line.amount),
            price_version=line.price_version,
            adjustment_for=line.adjustment_for,
            records=line.records,
            before_first_book=line.before_first_book,
        )
        for line in composed.lines
    )
    msg.rental.extend(
        metering_pb2.RentalLine(
            job_id=r.job_id,
            chip=r.chip,
            cards=r.cards,
            held_us=r.held_us,
            card_hour=_money(r.card_hour),
            cost=_money(round_money(r.exact)),
        )
        for r in composed.rentals
    )
    return msg


class Invoicer:
    def __init__(
        self,
        store: UsageStore,
        books: Sequence[SourcedBook],
        grace: timedelta,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._books = tuple(books)
        self._grace = grace
        self._clock = clock

    def final_at(self, month: Month) -> datetime:
        return month.end + self._grace

    async def invoice(self, tenant: str, month: Month) -> metering_pb2.Invoice | None:
        """The month's invoice: the final one if it is final, else the draft as of now. None
        for a month before the last final one that has no invoice (it had no usage)."""
        stored = await self._store.final_invoice(f"{tenant}/{month}")
        if stored is not None:
            return metering_pb2.Invoice.FromString(stored)
        last = await self._store.last_final(tenant)
        if last is not None and month <= last:
            return None
        first_open = last.next() if last is not None else None
        since = None if month == first_open else month.start
        rows = await self._store.unbilled(tenant, month.end, since)
        adjusted = {Month.of(r.ended_at) for r in rows if r.ended_at < month.start}
        billed = await self._store.billed(tenant, adjusted) if adjusted else []
        composed = compose(month, rows, self._books, billed)
        return invoice_message(
            tenant, month, composed, metering_pb2.INVOICE_STATUS_DRAFT, self.final_at(month)
        )

    async def invoices(self, tenant: str) -> list[metering_pb2.Invoice]:
        """Final invoices, then every draft with usage on it (lines left out)."""
        out = [metering_pb2.Invoice.FromString(d) for d in await self._store.final_invoices(tenant)]
        last = await self._store.last_final(tenant)
        first_open = last.next() if last is not None else None
        rows = await self._store.unbilled(tenant, None, None)
        months = {
            first_open if first_open and r.ended_at < first_open.start else Month.of(r.ended_at)
            for r in rows
        }
        for month in sorted(m for m in months if m is not None):
            draft = await self.invoice(tenant, month)
            if draft is not None:
                out.append(draft)
        for invoice in out:
            del invoice.lines[:]
            del invoice.rental[:]
        return out

    async def finalize_due(self) -> list[str]:
        """Close every invoice whose grace period is over, oldest month first; the ids closed."""
        now = self._clock()
        closed: list[str] = []
        for tenant, _ in await self._store.oldest_unbilled():
            try:
                closed.extend(await self._finalize_tenant(tenant, now))
            except Exception:
                # One tenant's invoice that cannot be built (a database hiccup, a book without
                # a price it needs) must not hold back every other tenant's; the next turn
                # retries it.
                log.exception("invoice.finalize_failed", tenant=tenant)
        return closed

    async def _finalize_tenant(self, tenant: str, now: datetime) -> list[str]:
        """Close the tenant's due invoices, oldest month first; the ids closed."""
        closed: list[str] = []
        while True:
            oldest = await self._store.oldest_unbilled()
            ended = dict(oldest).get(tenant)
            if ended is None:
                break
            last = await self._store.last_final(tenant)
            month = Month.of(ended)
            if last is not None and month <= last:
                month = last.next()  # late usage: an adjustment on the next invoice
            if self.final_at(month) > now:
                break
            final_at = self.final_at(month)

            def build(
                rows: list[Any],
                billed: list[Any],
                month: Month = month,
                at: datetime = final_at,
                tenant: str = tenant,
            ) -> bytes:
                composed = compose(month, rows, self._books, billed)
                msg = invoice_message(
                    tenant, month, composed, metering_pb2.INVOICE_STATUS_FINAL, at
                )
                return msg.SerializeToString(deterministic=True)

            if await self._store.finalize(tenant, month, build) is not None:
                closed.append(f"{tenant}/{month}")
                log.info("invoice.final", tenant=tenant, period=str(month))
        return closed

    async def run(self, interval_s: float) -> None:
        """Finalize what is due every ``interval_s``, until the service cancels it."""
        while True:
            try:
                await self.finalize_due()
            except Exception:  # a database hiccup must not end the loop; next turn retries
                log.exception("invoice.finalize_failed")
            await asyncio.sleep(interval_s)
