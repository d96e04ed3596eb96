"""Typed service configuration loaded from ``POCGRID_*`` environment variables.

Each config is a frozen dataclass. A field ``foo_bar`` is read from ``POCGRID_FOO_BAR``; field
names are unique across the project's configs so one variable means one thing everywhere (the
compose-file test relies on that). The env mapping is injected, never read from a global, so
tests and the launcher build configs without touching ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, cast

from services.core.nats_auth import IDENTITIES

ENV_PREFIX = "POCGRID_"


class ConfigError(ValueError):
    """A configuration value is missing or breaks a rule; names the variable."""


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _convert(name: str, raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _convert(name, raw, args[0]) if raw else None
    try:
        if annotation is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is Path:
            return Path(raw)
        if annotation is str:
            return raw
    except ValueError as exc:
        raise ConfigError(f"{env_name(name)}={raw!r}: not a valid {annotation.__name__}") from exc
    raise TypeError(f"unsupported config type for {name}: {annotation!r}")


class EnvConfig:
    """Mixin: ``from_env`` for frozen dataclasses whose fields are plain scalars."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Self:
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cast(Any, cls)):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(env_name(f.name))
            if raw is not None:
                values[f.name] = _convert(f.name, raw, hints[f.name])
        return cls(**values)

    @classmethod
    def env_names(cls) -> list[str]:
        return [env_name(f.name) for f in dataclasses.fields(cast(Any, cls))]


def parse_hostport(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{env_name(name)}={value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True, slots=True)
class CommonConfig(EnvConfig):
    """Settings every service process shares."""

    listen: str = "127.0.0.1:0"
    """HOST:PORT the gRPC server binds; port 0 picks a free port (tests, launcher)."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server with JetStream enabled."""

    data_dir: Path = Path(".pocgrid-data")
    """Where a service keeps its SQLite database when no database URL is set."""

    database_url: str = ""
    """Database of every service whose own ``POCGRID_<NAME>_DATABASE_URL`` is not set, with
    ``{name}`` standing for the service's database name (the service's name; ``agent-<node id>``
    for an agent): ``postgresql+asyncpg://pocgrid@db:5432/pocgrid_{name}`` gives each service,
    and each of any number of agents, a database of its own on one server. A PostgreSQL database
    so named that does not exist yet is created (the user needs CREATEDB). Empty: a SQLite file
    per service in ``data_dir``."""

    log_format: str = "auto"
    """'json', 'console', or 'auto' (JSON unless stderr is a terminal)."""

    log_level: str = "info"
    """Minimum level logged: debug, info, warning, error."""

    trace_file: str = ""
    """Append finished spans as JSON lines here (a collector-less way to see traces)."""

    shutdown_grace_s: float = 5.0
    """How long in-flight RPCs may finish after SIGTERM before they are cancelled."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message accepted or sent; larger requests fail RESOURCE_EXHAUSTED."""

    downstream_timeout_cap_s: float = 10.0
    """Upper bound on any call to another service, whatever the caller's deadline."""

    nats_user: str = ""
    """The service's NATS identity (services/core/nats_auth.py: its publish and subscribe
    permissions); empty: connect without credentials, to a server that requires none."""

    nats_password_file: str = ""
    """File holding nats_user's password (one line; a mounted secret, never the URL, which
    is logged)."""

    nats_ping_interval_s: float = 5.0
    """Seconds between the NATS client's pings (whole seconds); two unanswered pings mark the
    connection stale, so a hung server turns the bus NOT_SERVING and the client reconnects."""

    consumer_fetch_wait_s: float = 1.0
    """How long one JetStream pull waits for messages; also how soon a consumer notices stop."""

    consumer_batch: int = 64
    """Events fetched per pull by a durable JetStream consumer."""

    consumer_ack_wait_s: float = 30.0
    """How long the server waits for a consumed event's ack before it redelivers the event."""

    consumer_max_deliver: int = 20
    """Deliveries of one event before it goes to the dead-letter stream (the handler kept failing
    or its process kept dying before the ack)."""

    consumer_backoff_initial_s: float = 0.5
    """First pause after a consumer error and first redelivery delay of a failed event; each
    further consecutive failure doubles it, up to consumer_backoff_max_s."""

    consumer_backoff_max_s: float = 30.0
    """Cap on the consumer's retry pause and on an event's redelivery delay."""

    consumer_check_interval_s: float = 5.0
    """How often an idle consumer asks the server whether its durable still exists: a pull on a
    deleted durable just times out, exactly like a pull on an idle one."""

    consumer_unhealthy_after: int = 5
    """Consecutive failed attempts (fetch, subscribe, ack) after which a consumer, and with it the
    service's gRPC health, reports NOT_SERVING; the next successful pull reports SERVING again."""
    outbox_sweep_ms: int = 1_000
    """How often a publisher retries outbox events whose publish failed (NATS down or slow)."""
    trace_heartbeats: bool = False
    """Record spans for agents' lease heartbeats (a span pair per node every few seconds, which
    buries the traces people look for); off by default."""
    metrics_listen: str = ""
    """HOST:PORT of a Prometheus text endpoint (``/metrics``) for this service; empty = none."""
    metrics_export_interval_ms: int = 10_000
    """How often metrics are pushed over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    mesh_keys_dir: str = ""
    """Directory of the mesh's public keys (``<identity>.pub``, services/core/mesh_identity.py):
    every call between services carries a token signed by the caller's identity, checked against
    them. Required: a service without it does not start (its port would trust anyone)."""
    mesh_identity: str = ""
    """The identity this process signs its calls as; empty = the service's name."""
    mesh_private_key_file: str = ""
    """This identity's Ed25519 private key (PEM); empty = ``<mesh_keys_dir>/<identity>.key``."""
    gauge_interval_ms: int = 5_000
    """How often a service samples its gauges (queue depth, pool utilization, consumer
    backlog) when it exports metrics; each sample is a database query or a server round trip."""
    stream_replicas: int = 1
    """JetStream replicas of every stream the mesh creates: 1 on one nats-server, 3 on the
    3-node cluster of deploy/k8s (a stream then survives the loss of one server)."""

    def __post_init__(self) -> None:
        parse_hostport("listen", self.listen)
        if self.database_url and "{name}" not in self.database_url:
            # Services keep tables of the same names (an agent's outbox, say): one database for
            # all of them would mix their rows.
            raise ConfigError(
                f"{env_name('database_url')}: must contain {{name}} (one database per service)"
            )
        if self.metrics_listen:
            parse_hostport("metrics_listen", self.metrics_listen)
        if self.metrics_export_interval_ms < 100:
            raise ConfigError(f"{env_name('metrics_export_interval_ms')}: must be >= 100")
        if self.gauge_interval_ms < 50:
            raise ConfigError(f"{env_name('gauge_interval_ms')}: must be >= 50")
        if not 1 <= self.stream_replicas <= 5:
            # JetStream's own bound: a stream has 1..5 replicas.
            raise ConfigError(f"{env_name('stream_replicas')}: must be 1..5")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"{env_name('log_format')}: must be auto, json or console")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"{env_name('log_level')}: must be debug, info, warning or error")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"{env_name('shutdown_grace_s')}: must be >= 0")
        if not 1024 <= self.max_message_bytes <= 256 * 1024 * 1024:
            raise ConfigError(f"{env_name('max_message_bytes')}: must be 1 KiB..256 MiB")
        if self.nats_user and self.nats_user not in IDENTITIES:
            raise ConfigError(
                f"{env_name('nats_user')}={self.nats_user!r}: must be one of "
                + ", ".join(sorted(IDENTITIES))
            )
        if bool(self.nats_user) != bool(self.nats_password_file):
            raise ConfigError(
                f"{env_name('nats_user')} and {env_name('nats_password_file')} go together"
            )
        if not self.nats_url.startswith(("nats://", "tls://")):
            raise ConfigError(f"{env_name('nats_url')}: must start with nats:// or tls://")
        if self.downstream_timeout_cap_s <= 0:
            raise ConfigError(f"{env_name('downstream_timeout_cap_s')}: must be > 0")
        for name in (
            "consumer_fetch_wait_s",
            "consumer_ack_wait_s",
            "consumer_backoff_initial_s",
            "consumer_check_interval_s",
            "nats_ping_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)}: must be > 0")
        if self.consumer_backoff_max_s < self.consumer_backoff_initial_s:
            raise ConfigError(
                f"{env_name('consumer_backoff_max_s')}: must be >= "
                f"{env_name('consumer_backoff_initial_s')}"
            )
        if not 1 <= self.consumer_batch <= 1024:
            raise ConfigError(f"{env_name('consumer_batch')}: must be 1..1024")
        if self.consumer_max_deliver < 1:
            raise ConfigError(f"{env_name('consumer_max_deliver')}: must be >= 1")
        if self.consumer_unhealthy_after < 1:
            raise ConfigError(f"{env_name('consumer_unhealthy_after')}: must be >= 1")
        if self.outbox_sweep_ms <= 0:
            raise ConfigError(f"{env_name('outbox_sweep_ms')}: must be > 0")
        if self.consumer_ack_wait_s <= self.consumer_fetch_wait_s:
            # A batch is handled after its pull returns; a shorter ack wait would redeliver
            # events that are still in hand.
            raise ConfigError(
                f"{env_name('consumer_ack_wait_s')}: must be > {env_name('consumer_fetch_wait_s')}"
            )

    def consumer_backoff_s(self, failures: int) -> float:
        """Pause before retry number ``failures`` (1-based): exponential, capped."""
        exp = min(max(failures, 1) - 1, 32)
        return float(min(self.consumer_backoff_initial_s * 2**exp, self.consumer_backoff_max_s))

    def default_database_url(self, name: str) -> str:
        """Where the service whose database is called ``name`` keeps it when its own
        ``POCGRID_<NAME>_DATABASE_URL`` is not set: ``database_url`` with ``{name}`` filled in,
        else a SQLite file so named in ``data_dir``."""
        if self.database_url:
            return self.database_url.replace("{name}", name)
        return f"sqlite+aiosqlite:///{self.data_dir / (name + '.db')}"
