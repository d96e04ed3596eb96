"""Evaluator settings."""

from __future__ import annotations

import dataclasses

from services.core.config import EnvConfig


@dataclasses.dataclass(frozen=True, slots=True)
class EvaluatorConfig(EnvConfig):
    evaluator_scenarios_file: str = ""
    """JSON scenario catalogue to serve; empty means the packaged data/scenarios.json."""
