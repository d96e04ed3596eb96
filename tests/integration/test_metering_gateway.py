"""Usage through the gateway: each API key's tenant sees its own usage only (RPCs and
``pocgrid usage``), whatever tenant header the caller sends."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import grpc
import nats
import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.cli.main import main
from pocgrid.price_book import default_price_book, from_proto
from pocgrid.v1 import metering_pb2, metering_pb2_grpc
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from tests.conftest import wait_for
from tests.integration.test_metering import Publisher, _usage

pytestmark = pytest.mark.integration

KEY_A, KEY_B, KEY_ADMIN = "key-acme-123", "key-globex-456", "key-ops-789"


def _auth(key: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), *extra)


async def _mesh(common, closer, nats_server) -> tuple[GatewayServer, Publisher]:
    keys = f"{KEY_A}=acme,{KEY_B}=globex,{KEY_ADMIN}=ops:admin"
    meter = MeteringServer(common, MeteringConfig(api_keys=keys))
    await meter.start()
    closer.append(meter)
    gw = GatewayServer(common, GatewayConfig(api_keys=keys, metering_addr=meter.address))
    await gw.start()
    closer.append(gw)
    nc = await nats.connect(nats_server.url)
    closer.append(SimpleNamespace(stop=nc.close))
    pub = Publisher(nc.jetstream())
    now = datetime.now(UTC).replace(microsecond=0)
    minutes_ago = int((now - datetime(2025, 3, 1, 10, 0, tzinfo=UTC)) / timedelta(minutes=1))
    # acme: two jobs on two chips, one event long ago; globex: one event.
    for event in (
        _usage("a-1", minute=minutes_ago - 5, tokens_in=100, busy_device_us=100_000),
        _usage("a-2", minute=minutes_ago - 5, job_id="job-b", tokens_out=7, samples=3),
        _usage("a-3", minute=minutes_ago - 4, chip="mlu370-x8", busy_device_us=200_000),
        _usage("a-old", minute=0, tokens_in=1),
        _usage("b-1", minute=minutes_ago - 5, tenant="globex", tokens_in=999),
    ):
        await pub.publish(event)
    await wait_for(pub.consumed, within=15, what="metering to consume every usage event")
    return gw, pub


async def test_a_tenant_reads_only_its_own_usage_through_the_gateway(
    common, closer, nats_server
) -> None:
    gw, _ = await _mesh(common, closer, nats_server)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        mine = await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=_auth(KEY_A))
        assert sorted(r.usage_id for r in mine.records) == ["a-1", "a-2", "a-3", "a-old"]
        assert {r.tenant for r in mine.records} == {"acme"}
        theirs = await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=_auth(KEY_B))
        assert [r.usage_id for r in theirs.records] == ["b-1"]
        # A caller cannot name another tenant: the gateway sets the tenant from the key.
        spoofed = await stub.ListUsage(
            metering_pb2.ListUsageRequest(),
            metadata=_auth(KEY_A, ("x-pocgrid-tenant", "globex")),
        )
        assert {r.tenant for r in spoofed.records} == {"acme"}
        summary = await stub.GetUsageSummary(
            metering_pb2.GetUsageSummaryRequest(),
            metadata=_auth(KEY_B, ("x-pocgrid-tenant", "acme")),
        )
        assert summary.tenant == "globex"
        assert [(c.chip, c.tokens_in) for c in summary.by_chip] == [("ascend-910b2", 999)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=_auth("wrong-key"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _cli(capsys, gw: GatewayServer, key: str, *args: str) -> list[dict]:
    argv = ["--gateway", gw.address, "--api-key", key, "usage", "--json", *args]
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    # The services in this process log to stdout too; the CLI's JSON is one write.
    out = "\n" + capsys.readouterr().out
    rows: list[dict] = json.JSONDecoder().raw_decode(out, out.index("\n[") + 1)[0]
    return rows


async def test_pocgrid_usage_by_chip_job_meter_and_window(
    common, closer, nats_server, capsys
) -> None:
    gw, _ = await _mesh(common, closer, nats_server)
    by_chip = await _cli(capsys, gw, KEY_A)
    assert [(r["chip"], r["records"], r["input_tokens"]) for r in by_chip] == [
        ("ascend-910b2", 3, 101),
        ("mlu370-x8", 1, 0),
    ]
    recent = await _cli(capsys, gw, KEY_A, "--window", "1h")
    assert [(r["chip"], r["records"], r["input_tokens"]) for r in recent] == [
        ("ascend-910b2", 2, 100),
        ("mlu370-x8", 1, 0),
    ]
    by_job = await _cli(capsys, gw, KEY_A, "--by", "job", "--window", "1h")
    assert [(r["job_id"], r["records"], r["samples"]) for r in by_job] == [
        ("job-a", 2, 0),
        ("job-b", 1, 3),
    ]
    by_meter = await _cli(capsys, gw, KEY_A, "--by", "meter", "--window", "1h")
    assert {r["meter"]: r["quantity"] for r in by_meter} == {
        "input_tokens": 100,
        "output_tokens": 7,
        "samples": 3,
        # 100000 + 200000 device-us: exactly 300000.
        "busy_device_us": 300_000,
        "memory_byte_seconds": 0,
    }
    one_chip = await _cli(capsys, gw, KEY_A, "--chip", "mlu370-x8", "--by", "meter")
    assert {r["meter"]: r["quantity"] for r in one_chip}["busy_device_us"] == 200_000
    assert [r["input_tokens"] for r in await _cli(capsys, gw, KEY_B)] == [999]


def test_pocgrid_usage_window_is_checked(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--gateway", "127.0.0.1:1", "--api-key", "k", "usage", "--window", "0h"])
    assert "is not a window" in capsys.readouterr().err


async def test_the_price_book_in_force_through_the_gateway(
    common, closer, nats_server, capsys
) -> None:
    gw, _ = await _mesh(common, closer, nats_server)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        resp = await stub.GetPriceBook(metering_pb2.GetPriceBookRequest(), metadata=_auth(KEY_A))
        book, cards = from_proto(resp.book)
        assert book == default_price_book().book
        assert cards["a100-80gb-sxm"].basis == "published"
        one = await stub.GetPriceBook(
            metering_pb2.GetPriceBookRequest(chip="ascend-910b"), metadata=_auth(KEY_B)
        )
        assert [(c.chip, c.card_hour, c.busy_device_hour) for c in one.book.cards] == [
            ("ascend-910b", "1.63", "1.304")
        ]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetPriceBook(
                metering_pb2.GetPriceBookRequest(chip="no-such-chip"), metadata=_auth(KEY_A)
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-chip" in (err.value.details() or "")
        before = metering_pb2.GetPriceBookRequest()
        before.at.FromDatetime(datetime(2020, 1, 1, tzinfo=UTC))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetPriceBook(before, metadata=_auth(KEY_A))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetPriceBook(metering_pb2.GetPriceBookRequest(), metadata=_auth("nope"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    argv = ["--gateway", gw.address, "--api-key", KEY_A, "prices", "--chip", "mlu370-x8", "--json"]
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    doc = json.JSONDecoder().raw_decode(out, out.index("\n{") + 1)[0]
    assert doc["cards"][0]["chip"] == "mlu370-x8"
    assert doc["cards"][0]["basis"] == "PRICE_BASIS_ESTIMATED"


async def test_invoices_and_usage_are_each_tenants_own_and_an_admin_key_sees_all(
    common, closer, nats_server, capsys, tmp_path
) -> None:
    gw, _ = await _mesh(common, closer, nats_server)
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = metering_pb2_grpc.MeteringServiceStub(ch)
        mine = (
            await stub.GetInvoice(metering_pb2.GetInvoiceRequest(), metadata=_auth(KEY_A))
        ).invoice
        assert mine.tenant == "acme" and mine.status == metering_pb2.INVOICE_STATUS_DRAFT
        assert mine.records == 3  # a-1, a-2, a-3 this month; a-old is in March 2025
        theirs = (
            await stub.GetInvoice(metering_pb2.GetInvoiceRequest(), metadata=_auth(KEY_B))
        ).invoice
        assert theirs.tenant == "globex" and theirs.records == 1
        # Naming another tenant: refused for a tenant's key, with the field and the rule...
        for call, request in (
            (stub.GetInvoice, metering_pb2.GetInvoiceRequest(tenant="globex")),
            (stub.ListInvoices, metering_pb2.ListInvoicesRequest(tenant="globex")),
            (stub.ListUsage, metering_pb2.ListUsageRequest(tenant="globex")),
            (stub.QueryUsage, metering_pb2.QueryUsageRequest(tenant="*")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=_auth(KEY_A, ("x-pocgrid-role", "admin")))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (err.value.details() or "").startswith("tenant")
        # ... and allowed for an admin key (a caller's own role header is never passed on).
        admin = _auth(KEY_ADMIN)
        seen = await stub.GetInvoice(
            metering_pb2.GetInvoiceRequest(tenant="globex"), metadata=admin
        )
        assert seen.invoice.records == 1
        everyone = await stub.QueryUsage(
            metering_pb2.QueryUsageRequest(tenant="*", group_by=["tenant"]), metadata=admin
        )
        assert {g.tenant: g.meters["input_tokens"] for g in everyone.groups} == {
            "acme": 101,
            "globex": 999,
        }
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetInvoice(metering_pb2.GetInvoiceRequest(period="2026-13"), metadata=admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("period")
        # a-old ended in March 2025, before the first price book (in force from 2026-01-01):
        # it is on March 2025's invoice (a draft or, once the finalizer ran, final), priced by
        # that earliest book on a line that says so.
        march = (
            await stub.GetInvoice(
                metering_pb2.GetInvoiceRequest(period="2025-03"), metadata=_auth(KEY_A)
            )
        ).invoice
        assert march.records == 1 and list(march.price_versions) == ["default-2026-12-01"]
        assert march.lines and all(line.before_first_book for line in march.lines)
    html_file = tmp_path / "invoice.html"
    argv = [
        "--gateway",
        gw.address,
        "--api-key",
        KEY_A,
        "invoice",
        "--json",
        "--html",
        str(html_file),
    ]
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    doc = json.JSONDecoder().raw_decode(out, out.index("\n{") + 1)[0]
    assert doc["tenant"] == "acme" and doc["status"] == "INVOICE_STATUS_DRAFT"
    assert "Invoice acme/" in html_file.read_text()
    by_tenant = await _cli(capsys, gw, KEY_ADMIN, "--tenant", "*", "--by", "tenant")
    assert [(r["tenant"], r["records"]) for r in by_tenant] == [("acme", 4), ("globex", 1)]
    argv = ["--gateway", gw.address, "--api-key", KEY_B, "usage", "--tenant", "acme"]
    assert await asyncio.to_thread(main, argv) != 0
    per_month = await _cli(capsys, gw, KEY_A, "--by", "window", "--every", "month")
    assert per_month[0]["records"] == 1  # March 2025 first: a-old
