"""Service tokens: what a verifier accepts, what it refuses and why, and the caches."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.core import mesh_identity
from services.core.config import ConfigError
from services.core.errors import PermissionDenied, Unauthenticated
from services.core.mesh_auth import MeshCredentials
from services.core.service_tokens import TokenSigner

AUD = "pocgrid.v1.SchedulerService"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    mesh_identity.generate(directory)
    return directory


def creds(keys: Path, identity: str) -> MeshCredentials:
    return MeshCredentials.from_dir(keys, identity)


def test_a_gateway_token_proves_its_tenant_and_role(keys: Path) -> None:
    gw = creds(keys, "gateway")
    caller = gw.verifier.verify(gw.signer.token("acme", True, AUD), AUD)
    assert (caller.service, caller.tenant, caller.admin) == ("gateway", "acme", True)


def test_tokens_are_cached_per_tenant_role_and_audience(keys: Path) -> None:
    signer = creds(keys, "scheduler").signer
    first = signer.token("acme", False, AUD)
    assert signer.token("acme", False, AUD) is first
    assert signer.token("globex", False, AUD) != first
    assert signer.token("acme", False, "pocgrid.v1.AgentService") != first


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "SERVICE_TOKEN_MISSING"),
        ("", "SERVICE_TOKEN_MISSING"),
        ("acme", "SERVICE_TOKEN_MALFORMED"),
        ("v1.e30.AAAA", "SERVICE_TOKEN_MALFORMED"),  # {} : no claims
        ("v2.e30.AAAA", "SERVICE_TOKEN_MALFORMED"),
        ("v1.!!!.AAAA", "SERVICE_TOKEN_MALFORMED"),
    ],
)
def test_missing_or_malformed_tokens_are_unauthenticated(
    keys: Path, token: str | None, reason: str
) -> None:
    with pytest.raises(Unauthenticated) as err:
        creds(keys, "gateway").verifier.verify(token, AUD)
    assert err.value.reason == reason


def test_a_key_outside_the_mesh_signs_nothing(keys: Path) -> None:
    rogue = TokenSigner("gateway", Ed25519PrivateKey.generate())
    with pytest.raises(Unauthenticated) as err:
        creds(keys, "scheduler").verifier.verify(rogue.token("acme", True, AUD), AUD)
    assert err.value.reason == "SERVICE_TOKEN_BAD_SIGNATURE"


def test_a_tampered_claim_breaks_the_signature(keys: Path) -> None:
    token = creds(keys, "gateway").signer.sign("acme", False, AUD, int(time.time()))
    _, claims, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    body["ten"] = "globex"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated) as err:
        creds(keys, "scheduler").verifier.verify(f"v1.{forged}.{sig}", AUD)
    assert err.value.reason == "SERVICE_TOKEN_BAD_SIGNATURE"


def test_an_unknown_identity_is_refused(keys: Path) -> None:
    stranger = TokenSigner("stranger", Ed25519PrivateKey.generate())
    with pytest.raises(Unauthenticated) as err:
        creds(keys, "scheduler").verifier.verify(stranger.token("", False, AUD), AUD)
    assert err.value.reason == "SERVICE_TOKEN_UNKNOWN_ISSUER"


def test_expired_and_future_tokens_are_refused(keys: Path) -> None:
    gw = creds(keys, "gateway")
    verifier = creds(keys, "scheduler").verifier
    with pytest.raises(Unauthenticated) as err:
        verifier.verify(gw.signer.sign("acme", False, AUD, int(time.time()) - 3600), AUD)
    assert err.value.reason == "SERVICE_TOKEN_EXPIRED"
    with pytest.raises(Unauthenticated) as err:
        verifier.verify(gw.signer.sign("acme", False, AUD, int(time.time()) + 3600), AUD)
    assert err.value.reason == "SERVICE_TOKEN_BAD_LIFETIME"


def test_a_token_opens_only_the_service_it_was_made_for(keys: Path) -> None:
    gw = creds(keys, "gateway")
    verifier = creds(keys, "agent").verifier
    token = gw.signer.token("acme", False, AUD)
    for _ in range(2):  # uncached, then from the cache of verified tokens
        with pytest.raises(Unauthenticated) as err:
            verifier.verify(token, "pocgrid.v1.AgentService")
        assert err.value.reason == "SERVICE_TOKEN_WRONG_AUDIENCE"
        verifier.verify(token, AUD)


def test_an_agent_acts_for_no_tenant_and_only_gateway_or_operator_are_admin(keys: Path) -> None:
    verifier = creds(keys, "registry").verifier
    with pytest.raises(PermissionDenied, match="may not act for a tenant"):
        verifier.verify(creds(keys, "agent").signer.token("acme", False, AUD), AUD)
    with pytest.raises(PermissionDenied, match="admin role"):
        verifier.verify(creds(keys, "scheduler").signer.token("acme", True, AUD), AUD)
    assert verifier.verify(creds(keys, "operator").signer.token("", True, AUD), AUD).admin
    assert verifier.verify(creds(keys, "agent").signer.token("", False, AUD), AUD).tenant == ""


def test_credentials_need_the_matching_private_key(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not the private key"):
        MeshCredentials.from_dir(keys, "gateway", str(keys / "agent.key"))
    with pytest.raises(ConfigError, match=r"no nobody\.pub"):
        MeshCredentials.from_dir(keys, "nobody")
    with pytest.raises(ConfigError, match="holds no"):
        MeshCredentials.from_dir(tmp_path, "gateway")


def test_generated_private_keys_are_private(tmp_path: Path) -> None:
    mesh_identity.generate(tmp_path)
    for name in mesh_identity.IDENTITIES:
        assert (tmp_path / f"{name}.key").stat().st_mode & 0o077 == 0
    before = (tmp_path / "gateway.pub").read_bytes()
    mesh_identity.generate(tmp_path)  # existing keys are kept
    assert (tmp_path / "gateway.pub").read_bytes() == before
