"""NATS with per-service credentials and permissions (services/core/nats_auth.py), as the local
mesh runs it: a plain client with no or wrong credentials, or with another service's, cannot put
a usage event on anyone's bill, read the usage stream or tamper with it; the agent's credential
publishes usage that metering (and only metering) consumes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import ConsumerConfig, StreamConfig

from devmesh.nats_server import NatsServer
from pocgrid.cli.main import main as cli
from pocgrid.natsclient import inbox_prefix
from pocgrid.v1 import events_pb2, metering_pb2, metering_pb2_grpc
from services.core.bus import STREAMS
from services.core.config import CommonConfig, ConfigError
from services.core.nats_auth import (
    IDENTITIES,
    STREAM_SUBJECTS,
    USAGE_STREAM,
    new_passwords,
)
from services.metering.config import MeteringConfig
from services.metering.service import MeteringServer
from tests.conftest import service_channel, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

ACME = (("x-pocgrid-tenant", "acme"),)
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
REFUSED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error)


@pytest.fixture
def passwords() -> dict[str, str]:
    return new_passwords()


@pytest.fixture
def secure_nats(tmp_path: Path, passwords: dict[str, str]) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", passwords=passwords)
    server.start()
    yield server
    server.stop()


def _password_file(tmp_path: Path, user: str, password: str) -> Path:
    path = tmp_path / f"{user}.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def _usage(event_id: str, quantity_tokens: int) -> events_pb2.UsageRecorded:
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(T0)
    end.FromDatetime(T0 + timedelta(seconds=30))
    return events_pb2.UsageRecorded(
        event_id=event_id,
        tenant="acme",
        chip="ascend-910b2",
        node_id="node-a",
        job_id="job-a",
        tokens_out=quantity_tokens,
        started_at=start,
        ended_at=end,
    )


#: Per connection, what the server refused it (its -ERR lines; the connection stays open).
REFUSALS: dict[int, list[Exception]] = {}


async def _connect(url: str, user: str | None = None, password: str | None = None) -> Any:
    errors: list[Exception] = []

    async def record(exc: Exception) -> None:
        errors.append(exc)

    kwargs: dict[str, Any] = {"allow_reconnect": False, "connect_timeout": 3, "error_cb": record}
    if user is not None:
        kwargs |= {"user": user, "password": password, "inbox_prefix": inbox_prefix(user)}
    nc = await nats.connect(url, **kwargs)
    REFUSALS[id(nc)] = errors
    return nc


async def _publish(nc: Any, event: events_pb2.UsageRecorded) -> None:
    await nc.jetstream(timeout=1.0).publish(
        "usage.recorded", event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id}
    )


def test_table_matches_the_bus_streams() -> None:
    assert {s.name: s.subjects for s in STREAMS} == {
        name: (subject,) for name, subject in STREAM_SUBJECTS.items()
    }
    # Only agents (and the operator's dead-letter replay) may publish usage.
    usage = {u for u, i in IDENTITIES.items() if any(p.startswith("usage") for p in i.publishes)}
    assert usage == {"agent", "operator"}
    consumers = {
        u for u, i in IDENTITIES.items() if any(d.stream == USAGE_STREAM for d in i.consumes)
    }
    assert consumers == {"metering"}
    for identity in IDENTITIES.values():
        allow = identity.publish_allow()
        assert not any(p in (">", "$JS.API.>", "$JS.ACK.>", "_INBOX.>") for p in allow), allow
        # Its own reply inbox, and the plain (non-JetStream) subjects it must hear: no wildcard.
        subscribe = identity.permissions()["subscribe"]["allow"]
        assert subscribe == [f"_INBOX.{identity.user}.>", *identity.hears], subscribe
        assert not any(h in (">", "_INBOX.>") or h.startswith("$JS.") for h in identity.hears)


def test_config_checks_the_identity() -> None:
    with pytest.raises(ConfigError, match=r"POCGRID_NATS_USER.*one of"):
        CommonConfig(nats_user="mallory", nats_password_file="/dev/null")
    with pytest.raises(ConfigError, match="POCGRID_NATS_PASSWORD_FILE"):
        CommonConfig(nats_user="agent")


async def test_only_the_agents_credential_puts_usage_on_a_bill(
    tmp_path: Path, common: CommonConfig, secure_nats: NatsServer, passwords: dict[str, str]
) -> None:
    url = secure_nats.url
    # The session's mesh keys and settings (tests/conftest.py), on the secured nats-server.
    common = dataclasses.replace(
        common,
        nats_url=secure_nats.url,
        nats_user="metering",
        nats_password_file=str(_password_file(tmp_path, "metering", passwords["metering"])),
    )
    metering = MeteringServer(common, MeteringConfig(api_keys="key-acme=acme"))
    await metering.start()
    try:
        # No credentials, a wrong password, an unknown user: the connection itself is refused.
        for user, password in ((None, None), ("agent", "wrong"), ("mallory", "x")):
            with pytest.raises(Exception, match=r"[Aa]uthorization"):
                await _connect(url, user, password)

        # Another service's valid credential cannot publish usage, nor read or change the stream.
        nc = await _connect(url, "registry", passwords["registry"])
        try:
            with pytest.raises(REFUSED):
                await _publish(nc, _usage("forged-by-registry", 1_000_000))
            js = nc.jetstream(timeout=1.0)
            with pytest.raises(REFUSED):
                await js.add_consumer(USAGE_STREAM, ConsumerConfig(durable_name="steal"))
            with pytest.raises(REFUSED):
                await js.delete_stream(USAGE_STREAM)
            assert any("permissions violation" in str(e).lower() for e in REFUSALS[id(nc)])
        finally:
            await nc.close()

        agent = await _connect(url, "agent", passwords["agent"])
        try:
            js = agent.jetstream(timeout=1.0)
            # The agent publishes usage but may not read it back, nor act as metering's
            # consumer (acking or pulling its events), nor shorten the stream's retention.
            with pytest.raises(REFUSED):
                await js.add_consumer(USAGE_STREAM, ConsumerConfig(durable_name="peek"))
            with pytest.raises(REFUSED):
                await js.update_stream(
                    StreamConfig(name=USAGE_STREAM, subjects=["usage.>"], max_age=1.0)
                )
            with pytest.raises(REFUSED):
                await agent.request(f"$JS.API.CONSUMER.MSG.NEXT.{USAGE_STREAM}.metering", b"1", 1)
            sub = await agent.subscribe("usage.>")
            # The legitimate path works: the agent's event reaches metering.
            await _publish(agent, _usage("from-agent", 7))
            # ...but not the agent's own core subscription: usage is not readable on the bus.
            with pytest.raises(nats.errors.TimeoutError):
                await sub.next_msg(timeout=0.5)
            assert any('subscription to "usage.>"' in str(e) for e in REFUSALS[id(agent)])
        finally:
            await agent.close()

        async with service_channel(metering.address) as ch:
            stub = metering_pb2_grpc.MeteringServiceStub(ch)

            async def recorded() -> list[Any]:
                resp = await stub.ListUsage(metering_pb2.ListUsageRequest(), metadata=ACME)
                return list(resp.records)

            async def stored() -> bool:
                return bool(await recorded())

            await wait_for(stored, what="metering to store the agent's usage event")
            records = await recorded()
        assert [r.usage_id for r in records] == ["from-agent"]
    finally:
        await metering.stop()


async def test_the_deployments_nats_config_is_enforced(tmp_path: Path) -> None:
    """deploy/nats-auth.conf (compose and Kubernetes, generated by tools.gen_deploy) run by a
    real nats-server, with the passwords in its environment as the secrets provide them."""
    passwords = new_passwords()
    env = {**os.environ, **{f"NATS_PASSWORD_{u.upper()}": p for u, p in passwords.items()}}
    server = NatsServer(tmp_path / "nats", config_file=ROOT / "deploy" / "nats-auth.conf")
    server.start(env=env)
    try:
        with pytest.raises(Exception, match=r"[Aa]uthorization"):
            await _connect(server.url)
        metering = await _connect(server.url, "metering", passwords["metering"])
        agent = await _connect(server.url, "agent", passwords["agent"])
        registry = await _connect(server.url, "registry", passwords["registry"])
        try:
            # Metering owns the usage stream; the agent's publish is stored, the registry's not.
            await metering.jetstream(timeout=2.0).add_stream(
                StreamConfig(name=USAGE_STREAM, subjects=["usage.>"])
            )
            await _publish(agent, _usage("from-agent", 1))
            with pytest.raises(REFUSED):
                await _publish(registry, _usage("forged", 1))
            with pytest.raises(REFUSED):
                await agent.jetstream(timeout=1.0).delete_stream(USAGE_STREAM)
        finally:
            for nc in (metering, agent, registry):
                await nc.close()
    finally:
        server.stop()


async def test_dead_letters_flow_and_the_operator_reads_them(
    tmp_path: Path,
    common: CommonConfig,
    secure_nats: NatsServer,
    passwords: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Metering's identity may dead-letter (dlq.metering.>) and create the dead-letter
    stream; the operator's lists it through `pocgrid admin dlq` with its credential."""
    # The session's mesh keys and settings (tests/conftest.py), on the secured nats-server.
    common = dataclasses.replace(
        common,
        nats_url=secure_nats.url,
        nats_user="metering",
        nats_password_file=str(_password_file(tmp_path, "metering", passwords["metering"])),
    )
    metering = MeteringServer(common, MeteringConfig(api_keys="key-acme=acme"))
    await metering.start()
    try:
        agent = await _connect(secure_nats.url, "agent", passwords["agent"])
        try:
            # Not a usage event at all: metering dead-letters it at once.
            await agent.jetstream(timeout=2.0).publish(
                "usage.recorded", b"\xff not protobuf", headers={"Nats-Msg-Id": "garbage-1"}
            )
        finally:
            await agent.close()
        operator = _password_file(tmp_path, "operator", passwords["operator"])
        monkeypatch.setenv("POCGRID_NATS_USER", "operator")
        monkeypatch.setenv("POCGRID_NATS_PASSWORD_FILE", str(operator))
        argv = ["admin", "dlq", "list", "--json", "--nats", secure_nats.url]

        async def listed() -> bool:
            capsys.readouterr()
            rc = await asyncio.to_thread(cli, argv)
            lines = capsys.readouterr().out.splitlines()
            # The services' log lines share stdout here; the command's JSON starts at a "[".
            start = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
            letters = json.loads("\n".join(lines[start:]) or "[]")
            return rc == 0 and any(d["consumer"] == "metering" for d in letters)

        await wait_for(listed, within=20, every=0.5, what="the dead letter, read by the operator")
        # Without the operator's credential the same command is refused at connect.
        monkeypatch.delenv("POCGRID_NATS_USER")
        monkeypatch.delenv("POCGRID_NATS_PASSWORD_FILE")
        assert await asyncio.to_thread(cli, argv) != 0
    finally:
        await metering.stop()
