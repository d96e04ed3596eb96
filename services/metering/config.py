"""Metering settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name, parse_hostport


@dataclasses.dataclass(frozen=True, slots=True)
class MeteringConfig(EnvConfig):
    metering_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    api_keys: str = ""
    """The gateway's KEY=TENANT[:admin] pairs: metering accepts usage for their tenants only."""

    api_keys_file: str = ""
    """The gateway's key file, read for its tenants the same way."""

    registry_addr: str = ""
    """HOST:PORT of the registry: its key and tenant store's tenants are known too, learnt
    without a restart (empty: only the tenants of the key configuration)."""

    metering_ingest_batch: int = 1000
    """Usage events fetched, stored in one transaction and then acked, at a time (1..1024)."""

    invoice_grace_s: float = 2 * 24 * 3600.0
    """How long after a month ends its invoice stays a draft for late usage."""

    invoice_check_interval_s: float = 60.0
    """How often invoices whose grace period is over are made final."""

    def __post_init__(self) -> None:
        if self.registry_addr:
            parse_hostport("registry_addr", self.registry_addr)
        if not 1 <= self.metering_ingest_batch <= 1024:
            raise ConfigError(f"{env_name('metering_ingest_batch')}: must be 1..1024")
        if self.invoice_grace_s < 0:
            raise ConfigError(f"{env_name('invoice_grace_s')}: must be >= 0")
        if self.invoice_check_interval_s <= 0:
            raise ConfigError(f"{env_name('invoice_check_interval_s')}: must be > 0")
