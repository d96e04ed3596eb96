"""Adapter settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterConfig(EnvConfig):
    adapter_memory_reserve_fraction: float = 0.10
    """Share of each device's memory held back from the weights for the runtime context,
    workspace and allocator fragmentation (vendor runtimes take roughly 0.5-3 GB; 10% of a
    32-96 GB device covers that with some room for activations)."""

    def __post_init__(self) -> None:
        if not 0 <= self.adapter_memory_reserve_fraction < 1:
            raise ConfigError(f"{env_name('adapter_memory_reserve_fraction')}: must be in [0, 1)")
