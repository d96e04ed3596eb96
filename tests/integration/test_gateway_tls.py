"""TLS on the gateway: both public ports (gRPC and the OpenAI-compatible HTTP endpoint) serve
only TLS with the configured certificate; a client that trusts the CA works, a client that does
not is refused at the handshake, and plaintext to a TLS port gets nothing."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from devmesh.tls import TlsFiles, issue, make_ca, make_gateway_tls, pem_cert, pem_key
from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from gateway.tls import GatewayTls
from pocgrid.client import Client
from pocgrid.v1 import gateway_pb2, gateway_pb2_grpc
from services.core.config import ConfigError
from services.registry.config import RegistryConfig
from services.registry.service import RegistryServer

pytestmark = pytest.mark.integration

KEY = "tls-test-key"
AUTH = (("authorization", f"Bearer {KEY}"),)


async def _gateway(common, closer, tls: TlsFiles, **overrides) -> GatewayServer:
    reg = RegistryServer(common, RegistryConfig())
    await reg.start()
    closer.append(reg)
    cfg = GatewayConfig(
        api_keys=f"{KEY}=acme",
        registry_addr=reg.address,
        openai_listen="127.0.0.1:0",
        tls_cert_file=str(tls.cert_file),
        tls_key_file=str(tls.key_file),
        **overrides,
    )
    gw = GatewayServer(common, cfg)
    await gw.start()
    closer.append(gw)
    return gw


def _who_am_i(address: str, ca_file: Path | None) -> str:
    with Client(address, KEY, timeout_s=5, ca_file=ca_file) as pg:
        return pg.gateway_service.WhoAmI(gateway_pb2.WhoAmIRequest()).tenant


async def _aio_who_am_i(channel: grpc.aio.Channel) -> str:
    resp = await gateway_pb2_grpc.GatewayServiceStub(channel).WhoAmI(
        gateway_pb2.WhoAmIRequest(), metadata=AUTH, timeout=5
    )
    return resp.tenant


async def test_grpc_works_with_the_ca_and_is_refused_without(common, closer, tmp_path):
    tls = make_gateway_tls(tmp_path / "tls")
    gw = await _gateway(common, closer, tls)
    # The SDK with the CA: a verified TLS connection, the call answered.
    assert await asyncio.to_thread(_who_am_i, gw.address, tls.ca_file) == "acme"
    # The SDK with another CA (a gateway impersonated, or the wrong bundle): the handshake
    # fails, so the call never reaches the gateway's handler.
    other = make_gateway_tls(tmp_path / "other")
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(_who_am_i, gw.address, other.ca_file)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS with only the system's roots (no CA given to the client): refused the same way.
    async with grpc.aio.secure_channel(gw.address, grpc.ssl_channel_credentials()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as aio_err:
            await _aio_who_am_i(ch)
        assert aio_err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Plaintext gRPC to the TLS port: no HTTP/2 preface the server accepts, nothing answered.
    async with grpc.aio.insecure_channel(gw.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as aio_err:
            await _aio_who_am_i(ch)
        assert aio_err.value.code() == grpc.StatusCode.UNAVAILABLE
    # And the gateway still serves verified clients after the refused ones.
    assert await asyncio.to_thread(_who_am_i, gw.address, tls.ca_file) == "acme"


async def test_http_endpoint_serves_tls_only(common, closer, tmp_path):
    tls = make_gateway_tls(tmp_path / "tls")
    gw = await _gateway(common, closer, tls)
    assert gw.openai is not None
    url = f"https://{gw.openai.address}/v1/models"
    headers = {"Authorization": f"Bearer {KEY}"}
    trusted = ssl.create_default_context(cafile=str(tls.ca_file))
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, ssl=trusted) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["object"] == "list"
        # Without the CA: certificate verification fails in the handshake.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(url, headers=headers, ssl=ssl.create_default_context()):
                pass
        # Plaintext HTTP to the TLS port: the server reads no request, so no response comes.
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://{gw.openai.address}/v1/models", headers=headers):
                pass


async def test_mutual_tls_needs_a_client_certificate(common, closer, tmp_path):
    tls = make_gateway_tls(tmp_path / "tls")
    client_ca_key, client_ca = make_ca("pocgrid client CA")
    (tmp_path / "client-ca.pem").write_bytes(pem_cert(client_ca))
    gw = await _gateway(common, closer, tls, tls_client_ca_file=str(tmp_path / "client-ca.pem"))
    roots = tls.ca_file.read_bytes()
    async with grpc.aio.secure_channel(gw.address, grpc.ssl_channel_credentials(roots)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _aio_who_am_i(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    key, cert = issue(client_ca_key, client_ca, ["tenant-acme"], client=True)
    creds = grpc.ssl_channel_credentials(roots, pem_key(key), pem_cert(cert))
    async with grpc.aio.secure_channel(gw.address, creds) as ch:
        assert await _aio_who_am_i(ch) == "acme"


async def test_cli_verifies_with_ca_file(common, closer, tmp_path):
    tls = make_gateway_tls(tmp_path / "tls")
    gw = await _gateway(common, closer, tls)
    base = [sys.executable, "-m", "pocgrid.cli.main", "--gateway", gw.address, "--api-key", KEY]
    env = {"POCGRID_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    ok = await asyncio.create_subprocess_exec(
        *base,
        "--ca-file",
        str(tls.ca_file),
        "chips",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await ok.communicate()
    assert ok.returncode == 0, err.decode()
    assert any(c["name"] for c in json.loads(out))
    plain = await asyncio.create_subprocess_exec(
        *base,
        "chips",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await plain.communicate()
    assert plain.returncode != 0
    assert b"UNAVAILABLE" in err or b"unavailable" in err.lower()


def test_tls_config_is_checked_at_start(tmp_path):
    tls = make_gateway_tls(tmp_path / "tls")
    other = make_gateway_tls(tmp_path / "other")
    with pytest.raises(ConfigError, match="POCGRID_TLS_KEY_FILE"):
        GatewayConfig(api_keys="k=t", tls_cert_file=str(tls.cert_file))
    with pytest.raises(ConfigError, match="POCGRID_TLS_CERT_FILE"):
        GatewayConfig(api_keys="k=t", tls_client_ca_file=str(tls.ca_file))
    mismatched = GatewayConfig(
        api_keys="k=t", tls_cert_file=str(tls.cert_file), tls_key_file=str(other.key_file)
    )
    with pytest.raises(ConfigError, match="not a certificate and its private key"):
        GatewayTls.from_config(mismatched)
    missing = GatewayConfig(
        api_keys="k=t", tls_cert_file=str(tmp_path / "nope.pem"), tls_key_file=str(tls.key_file)
    )
    with pytest.raises(ConfigError, match=r"POCGRID_TLS_CERT_FILE=.*cannot read"):
        GatewayTls.from_config(missing)
