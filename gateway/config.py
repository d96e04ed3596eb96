"""Gateway settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name, parse_hostport


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayConfig(EnvConfig):
    api_keys: str = ""
    """Bootstrap keys, comma-separated KEY=TENANT[:admin] pairs (development; prefer
    api_keys_file). Every other key lives in the registry's key store."""

    api_keys_file: str = ""
    """Bootstrap keys file: {"keys": [{"key" or "key_sha256", "tenant", "admin"?,
    "rate_per_s"?, "burst"?}]}; e.g. the first admin key, which creates the others."""

    key_cache_ttl_s: float = 10.0
    """How long a key looked up in the registry's store is trusted without asking again, while
    NATS stays connected (revocations arrive as events at once; without NATS: 1 s)."""

    rate_limit_per_s: float = 200.0
    """Default sustained requests per second per tenant."""

    rate_limit_burst: int = 400
    """Default burst size per tenant (token bucket capacity)."""

    unauthenticated_rate_per_s: float = 5.0
    """Sustained calls per second per client address that fail authentication (no key, a
    wrong one), gRPC and HTTP together; beyond it they get RESOURCE_EXHAUSTED (429)."""

    unauthenticated_burst: int = 20
    """Burst of such calls per client address (token bucket capacity)."""

    registry_addr: str = ""
    """HOST:PORT of the registry."""

    scheduler_addr: str = ""
    """HOST:PORT of the scheduler."""

    metering_addr: str = ""
    """HOST:PORT of metering."""

    adapter_addr: str = ""
    """HOST:PORT of the adapter."""

    evaluator_addr: str = ""
    """HOST:PORT of the evaluator."""

    openai_listen: str = ""
    """HOST:PORT of the OpenAI-compatible HTTP endpoint (port 0: a free port); empty: none."""

    openai_max_body_bytes: int = 1024 * 1024
    """Largest request body the OpenAI-compatible endpoint reads; a larger one gets 413. A
    32k-token prompt is about 128 KiB of text."""

    openai_speed_factor: float = 1.0
    """Real seconds per virtual second the endpoint streams tokens at, inverted: 1.0 paces
    tokens in real time, 2.0 twice as fast, 0 sends each as soon as the agent produces it."""

    tls_cert_file: str = ""
    """PEM certificate chain the gateway presents on its gRPC port and its OpenAI-compatible
    HTTP endpoint; set with tls_key_file, and both ports speak only TLS. Empty: plaintext."""

    tls_key_file: str = ""
    """PEM private key of tls_cert_file (unencrypted; mount it from a secret, mode 0600)."""

    tls_client_ca_file: str = ""
    """PEM CA bundle: when set, clients must also present a certificate it signed (mutual TLS)
    on both ports; empty: any client that trusts the gateway's certificate may connect."""

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                f"{env_name('tls_cert_file')} and {env_name('tls_key_file')} go together: "
                "set both (TLS) or neither (plaintext)"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                f"{env_name('tls_client_ca_file')} needs {env_name('tls_cert_file')}: "
                "client certificates are checked only over TLS"
            )
        if self.rate_limit_per_s <= 0 or self.rate_limit_burst < 1:
            raise ConfigError("rate limits must be positive")
        if self.unauthenticated_rate_per_s <= 0 or self.unauthenticated_burst < 1:
            raise ConfigError(
                f"{env_name('unauthenticated_rate_per_s')} must be > 0 and "
                f"{env_name('unauthenticated_burst')} >= 1"
            )
        if not 1024 <= self.openai_max_body_bytes <= 64 * 1024 * 1024:
            raise ConfigError(f"{env_name('openai_max_body_bytes')}: must be 1 KiB..64 MiB")
        if not 0 < self.key_cache_ttl_s <= 3600:
            raise ConfigError(f"{env_name('key_cache_ttl_s')}: must be in (0, 3600] seconds")
        if self.openai_speed_factor < 0:
            raise ConfigError(f"{env_name('openai_speed_factor')}: must be >= 0")
        if self.openai_listen:
            parse_hostport("openai_listen", self.openai_listen)
        for name in (
            "registry_addr",
            "scheduler_addr",
            "metering_addr",
            "adapter_addr",
            "evaluator_addr",
        ):
            value = getattr(self, name)
            if value:
                parse_hostport(name, value)
        if not self.api_keys and not self.api_keys_file and not self.registry_addr:
            raise ConfigError(
                f"{env_name('api_keys')}, {env_name('api_keys_file')} or "
                f"{env_name('registry_addr')} (its key store) must be set: the gateway serves "
                "no one without API keys"
            )
