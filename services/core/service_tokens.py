"""Signed service tokens: who is calling (a service identity), for which tenant, in which role.

A token is ``v1.<claims>.<signature>`` (base64url, no padding): the claims are compact JSON
(``iss`` issuing identity, ``ten`` tenant or "", ``adm`` admin role, ``aud`` the gRPC service
called, ``iat``/``exp`` seconds since the epoch) and the signature is the issuer's Ed25519
signature over ``v1.<claims>``. The audience binds a token to one API (a token an agent was sent
does not open the scheduler); the short lifetime bounds a leaked one.

Both ends cache: a signer hands out the same token per (tenant, role, audience) until a minute
before it expires, a verifier remembers a token it checked until it expires, so neither signs or
verifies on the hot path of every call (bench/mesh_auth.py measures what is left).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.core.errors import PermissionDenied, Unauthenticated

TOKEN_METADATA_KEY: Final = "x-pocgrid-service-token"
"""The gRPC metadata carrying a caller's signed service token."""

_VERSION: Final = "v1"
LIFETIME_S: Final = 300
"""How long a token is valid: long enough to be cached, short enough that a leaked one dies."""
_REFRESH_BEFORE_S: Final = 60
#: Clocks of two hosts may disagree by this much (a token "issued in the future" within it is ok).
_SKEW_S: Final = 30
#: A token claiming a longer life was not made by this code: refused.
_MAX_LIFETIME_S: Final = 600
_CACHE_LIMIT: Final = 4096

#: Identities that act for a tenant: the gateway for its callers, the services that pass their
#: caller's tenant on (the scheduler starting a tenant's task, the evaluator's load), the
#: operator. An agent acts for nobody: a token of it that names a tenant is refused.
MAY_ASSERT_TENANT: Final = frozenset(
    {"gateway", "registry", "scheduler", "metering", "adapter", "evaluator", "operator"}
)
#: The admin role comes from the gateway (the caller's key is an admin key) or the operator;
#: peers do not pass it on, so it never travels further than the first service.
MAY_ASSERT_ADMIN: Final = frozenset({"gateway", "operator"})


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of an RPC."""

    service: str
    tenant: str
    admin: bool
    key_id: str = ""
    """The API key the gateway authenticated the caller with (the audit log's "who"); only the
    gateway asserts one (claim ``kid``, absent when empty)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Makes (and caches) the tokens of one identity."""

    def __init__(self, identity: str, key: Ed25519PrivateKey, lifetime_s: int = LIFETIME_S) -> None:
        if lifetime_s <= _REFRESH_BEFORE_S or lifetime_s > _MAX_LIFETIME_S:
            raise ValueError(f"lifetime_s must be in ({_REFRESH_BEFORE_S}, {_MAX_LIFETIME_S}]")
        self.identity = identity
        self._key = key
        self._lifetime_s = lifetime_s
        self._cache: dict[tuple[str, bool, str, str], tuple[str, float]] = {}

    def token(self, tenant: str, admin: bool, audience: str, key_id: str = "") -> str:
        key = (tenant, admin, audience, key_id)
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        token = self.sign(tenant, admin, audience, int(now), key_id)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (token, now + self._lifetime_s - _REFRESH_BEFORE_S)
        return token

    def sign(
        self, tenant: str, admin: bool, audience: str, issued_at: int, key_id: str = ""
    ) -> str:
        """A fresh token (uncached); ``token`` is what callers use."""
        claims: dict[str, str | bool | int] = {
            "iss": self.identity,
            "ten": tenant,
            "adm": admin,
            "aud": audience,
            "iat": issued_at,
            "exp": issued_at + self._lifetime_s,
        }
        if key_id:
            claims["kid"] = key_id
        head = f"{_VERSION}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{head}.{_b64(self._key.sign(head.encode('ascii')))}"


class TokenVerifier:
    """Checks tokens against the mesh's public keys; remembers good ones until they expire."""

    def __init__(self, public_keys: dict[str, Ed25519PublicKey]) -> None:
        self._keys = dict(public_keys)
        self._cache: dict[str, tuple[Caller, str, float]] = {}

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str | None, audience: str) -> Caller:
        """The caller a token proves; Unauthenticated (with the reason) when it proves none,
        PermissionDenied when its issuer may not assert what it claims."""
        if not token:
            raise Unauthenticated(
                f"no service token: calls to {audience} must carry a signed "
                f"'{TOKEN_METADATA_KEY}' (public clients call the gateway with an API key)",
                reason="SERVICE_TOKEN_MISSING",
                metadata={"metadata_key": TOKEN_METADATA_KEY},
            )
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None and now < cached[2]:
            if cached[1] != audience:
                raise _bad(f"the token is for {cached[1]}, not {audience}", "WRONG_AUDIENCE")
            return cached[0]
        caller, expires = self._check(token, audience, now)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (caller, audience, expires)
        return caller

    def _check(self, token: str, audience: str, now: float) -> tuple[Caller, float]:
        version, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not payload or not signature:
            raise _bad(f"not a {_VERSION} token (v1.<claims>.<signature>)", "MALFORMED")
        try:
            claims = json.loads(_unb64(payload))
            sig = _unb64(signature)
        except (ValueError, binascii.Error):
            raise _bad("the token's claims or signature do not decode", "MALFORMED") from None
        if not isinstance(claims, dict):
            raise _bad("the token's claims are not an object", "MALFORMED")
        issuer, tenant, admin = claims.get("iss"), claims.get("ten"), claims.get("adm")
        aud, iat, exp = claims.get("aud"), claims.get("iat"), claims.get("exp")
        if not (
            isinstance(issuer, str)
            and isinstance(tenant, str)
            and isinstance(admin, bool)
            and isinstance(aud, str)
            and isinstance(iat, int)
            and isinstance(exp, int)
        ):
            raise _bad("the token lacks a claim (iss, ten, adm, aud, iat, exp)", "MALFORMED")
        key = self._keys.get(issuer)
        if key is None:
            raise _bad(f"unknown service identity {issuer!r}", "UNKNOWN_ISSUER")
        try:
            key.verify(sig, f"{version}.{payload}".encode("ascii"))
        except InvalidSignature:
            raise _bad(f"bad signature for identity {issuer!r}", "BAD_SIGNATURE") from None
        if exp <= now:
            raise _bad(f"the token expired {int(now - exp)} s ago", "EXPIRED")
        if iat > now + _SKEW_S or exp - iat > _MAX_LIFETIME_S:
            raise _bad("the token's issue time or lifetime is out of bounds", "BAD_LIFETIME")
        if aud != audience:
            raise _bad(f"the token is for {aud}, not {audience}", "WRONG_AUDIENCE")
        if tenant and issuer not in MAY_ASSERT_TENANT:
            raise PermissionDenied(
                f"service identity {issuer!r} may not act for a tenant",
                reason="TENANT_NOT_ASSERTABLE",
            )
        if admin and issuer not in MAY_ASSERT_ADMIN:
            raise PermissionDenied(
                f"service identity {issuer!r} may not assert the admin role",
                reason="ADMIN_NOT_ASSERTABLE",
            )
        key_id = claims.get("kid", "")
        if not isinstance(key_id, str) or (key_id and issuer != "gateway"):
            raise _bad("the key id claim (kid) is the gateway's, and a string", "MALFORMED")
        return Caller(issuer, tenant, admin, key_id), float(exp)


def _bad(why: str, reason: str) -> Unauthenticated:
    return Unauthenticated(f"bad service token: {why}", reason=f"SERVICE_TOKEN_{reason}")
