"""Scheduler settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig(EnvConfig):
    scheduler_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    scheduler_outbox_sweep_ms: int = 1_000
    """How often job events whose publish failed (NATS down) are published again."""

    def __post_init__(self) -> None:
        if self.scheduler_outbox_sweep_ms <= 0:
            raise ConfigError(f"{env_name('scheduler_outbox_sweep_ms')}: must be > 0")
