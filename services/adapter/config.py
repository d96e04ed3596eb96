"""Adapter settings."""

from __future__ import annotations

import dataclasses

from pocgrid.adapt.onnx_import import DEFAULT_MAX_BYTES
from services.core.config import ConfigError, EnvConfig, env_name


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterConfig(EnvConfig):
    """The fit check's memory rules (the runtime reserve included) are the performance
    model's, in ``pocgrid/perf/data/efficiency.json``; these settings are the imports'."""

    adapter_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    adapter_max_model_bytes: int = DEFAULT_MAX_BYTES
    """Largest ONNX upload accepted. gRPC itself refuses requests over POCGRID_MAX_MESSAGE_BYTES
    (RESOURCE_EXHAUSTED); below that, a larger file gets INVALID_ARGUMENT naming this limit."""

    def __post_init__(self) -> None:
        if self.adapter_max_model_bytes < 1024:
            raise ConfigError(f"{env_name('adapter_max_model_bytes')}: must be >= 1024")
