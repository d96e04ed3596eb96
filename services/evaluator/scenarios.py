"""The scenario catalogue: typed records read from ``data/scenarios.json`` and checked on load.

Every model a scenario names must be in the chip/model catalogue, so a scenario can never point
the evaluator at a model nobody can look up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, cast

from pocgrid.catalog import Catalog

SCHEMA_VERSION: Final = 1
#: MLPerf inference load scenarios, as the data file spells them.
LOAD_SCENARIOS: Final = ("offline", "server", "single-stream", "multi-stream")


class ScenarioDataError(ValueError):
    """The scenario file does not have the expected shape; names the scenario and the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """Default service-level objective; 0 means no bound."""

    p99_latency_ms: float = 0.0
    p99_ttft_ms: float = 0.0
    p99_tpot_ms: float = 0.0
    min_accuracy_ratio: float = 0.0
    """Accuracy at least this share of the reference precision's (MLPerf uses 0.99)."""
    source: str
    """Where the bounds come from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    """Stable id, e.g. ``llm-chat``."""
    title: str
    description: str
    models: tuple[str, ...]
    """Catalogue model names, exactly as the catalogue spells them."""
    load_scenarios: tuple[str, ...]
    default_slo: Slo
    accuracy_metric: str


def load_scenarios(catalog: Catalog, path: Path | None = None) -> tuple[Scenario, ...]:
    """Read the scenario file (default: the packaged one) and check it against ``catalog``."""
    if path is None:
        text = (
            resources.files("services.evaluator")
            .joinpath("data/scenarios.json")
            .read_text(encoding="utf-8")
        )
    else:
        text = path.read_text(encoding="utf-8")
    document = _mapping("scenarios file", json.loads(text))
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ScenarioDataError(f"schema_version must be {SCHEMA_VERSION}")
    records = document.get("scenarios")
    if not isinstance(records, list) or not records:
        raise ScenarioDataError("'scenarios' must be a non-empty list")
    scenarios = tuple(_scenario(_mapping("scenarios[]", r), catalog) for r in records)
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ScenarioDataError("scenario names must be unique")
    return scenarios


def _scenario(data: Mapping[str, object], catalog: Catalog) -> Scenario:
    name = _str(data, "name")
    try:
        models = _str_list(data, "models")
        known = {m.name for m in catalog.models}
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ScenarioDataError(f"models not in the catalogue: {', '.join(unknown)}")
        loads = _str_list(data, "load_scenarios")
        bad = [s for s in loads if s not in LOAD_SCENARIOS]
        if bad:
            raise ScenarioDataError(f"load_scenarios must be among {LOAD_SCENARIOS}, got {bad}")
        slo = _mapping("default_slo", data.get("default_slo"))
        ratio = _number(slo, "min_accuracy_ratio")
        if not 0 <= ratio <= 1:
            raise ScenarioDataError("default_slo.min_accuracy_ratio must be in [0, 1]")
        return Scenario(
            name=name,
            title=_str(data, "title"),
            description=_str(data, "description"),
            models=tuple(models),
            load_scenarios=tuple(loads),
            default_slo=Slo(
                p99_latency_ms=_number(slo, "p99_latency_ms"),
                p99_ttft_ms=_number(slo, "p99_ttft_ms"),
                p99_tpot_ms=_number(slo, "p99_tpot_ms"),
                min_accuracy_ratio=ratio,
                source=_str(slo, "source"),
            ),
            accuracy_metric=_str(data, "accuracy_metric"),
        )
    except ScenarioDataError as exc:
        raise ScenarioDataError(f"scenario {name!r}: {exc}") from None


def _mapping(what: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ScenarioDataError(f"{what} must be an object")
    return cast("Mapping[str, object]", value)


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ScenarioDataError(f"{key!r} must be a non-empty string")
    return value


def _str_list(data: Mapping[str, object], key: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ScenarioDataError(f"{key!r} must be a non-empty list of strings")
    return cast("list[str]", value)


def _number(data: Mapping[str, object], key: str) -> float:
    """An optional non-negative number; absent means 0 (no bound)."""
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioDataError(f"{key!r} must be a number")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ScenarioDataError(f"{key!r} must be finite and >= 0")
    return result
