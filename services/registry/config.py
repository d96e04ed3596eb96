"""Registry settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryConfig(EnvConfig):
    registry_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    lease_ttl_ms: int = 10_000
    """A node that sends no heartbeat for this long is marked LOST."""

    heartbeat_interval_ms: int = 2_000
    """How often agents are told to heartbeat; must leave room for a few misses in the lease."""

    lease_check_interval_ms: int = 250
    """How often expired leases are looked for (LOST is reported at most this late)."""

    heartbeat_flush_interval_ms: int = 1_000
    """Heartbeat times are persisted in batches this often, not per heartbeat."""

    def __post_init__(self) -> None:
        if self.lease_ttl_ms < 100:
            raise ConfigError(f"{env_name('lease_ttl_ms')}: must be >= 100")
        if not 0 < self.heartbeat_interval_ms < self.lease_ttl_ms:
            raise ConfigError(
                f"{env_name('heartbeat_interval_ms')}: must be > 0 and < POCGRID_LEASE_TTL_MS"
            )
        if self.lease_check_interval_ms <= 0 or self.heartbeat_flush_interval_ms <= 0:
            raise ConfigError("lease check and flush intervals must be > 0")
