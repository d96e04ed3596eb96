"""Metering settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name


@dataclasses.dataclass(frozen=True, slots=True)
class MeteringConfig(EnvConfig):
    metering_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    metering_consume_batch: int = 64
    """Usage events fetched per pull from the durable JetStream consumer."""

    def __post_init__(self) -> None:
        if not 1 <= self.metering_consume_batch <= 1024:
            raise ConfigError(f"{env_name('metering_consume_batch')}: must be 1..1024")
