"""The gateway's TLS material, read once from the files its config names.

One certificate and key serve both public ports (gRPC and the OpenAI-compatible HTTP endpoint),
so a client trusts one CA for both. The files are read and checked at start-up (a missing file,
a key that does not match its certificate, a CA bundle that is not PEM fail the start with the
variable named) rather than at the first handshake, where the error would reach only a client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.config import GatewayConfig
from services.core.config import ConfigError, env_name


def _read(field: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{env_name(field)}={path!r}: cannot read ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{env_name(field)}={path!r}: not a PEM file")
    return data


@dataclass(frozen=True, slots=True)
class GatewayTls:
    cert_file: str
    key_file: str
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    client_ca_file: str

    @classmethod
    def from_config(cls, config: GatewayConfig) -> GatewayTls | None:
        """None when the gateway runs plaintext (no certificate configured)."""
        if not config.tls_cert_file:
            return None
        tls = cls(
            config.tls_cert_file,
            config.tls_key_file,
            _read("tls_cert_file", config.tls_cert_file),
            _read("tls_key_file", config.tls_key_file),
            _read("tls_client_ca_file", config.tls_client_ca_file)
            if config.tls_client_ca_file
            else None,
            config.tls_client_ca_file,
        )
        tls.ssl_context()  # the pair and the bundle are checked here, before any port opens
        return tls

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTP endpoint's server context: TLS 1.2 or newer, as gRPC's default."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{env_name('tls_cert_file')}={self.cert_file!r} and {env_name('tls_key_file')}="
                f"{self.key_file!r}: not a certificate and its private key ({exc.reason})"
            ) from None
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cadata=self.client_ca.decode("ascii", "replace"))
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"{env_name('tls_client_ca_file')}={self.client_ca_file!r}: "
                    f"not a CA bundle ({exc.reason})"
                ) from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
