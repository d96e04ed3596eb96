"""Scheduler settings."""

from __future__ import annotations

import dataclasses

from services.core.config import EnvConfig


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig(EnvConfig):
    scheduler_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""
