"""Adapter settings."""

from __future__ import annotations

import dataclasses

from services.core.config import EnvConfig


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterConfig(EnvConfig):
    """No settings of its own yet: the fit check's memory rules (the runtime reserve included)
    are the performance model's, in ``pocgrid/perf/data/efficiency.json``."""
