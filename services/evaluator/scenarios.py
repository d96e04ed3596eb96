"""Scenarios as data: the catalogue in ``data/scenarios.json`` and the tenants' own.

A scenario is a ``pocgrid.v1.Scenario`` message everywhere: the data file is read into those
messages (``json_format``, so an unknown key is refused by name), and a tenant's
``CreateScenario`` sends one. Both go through the one validator here, which names the field and
the rule of the first thing wrong (``scenario.input_len.max: must be >= min``), so a bad file
fails the evaluator's start and a bad request gets INVALID_ARGUMENT.

Atomic scenarios are ``llm`` (tokens in, tokens out: request-size distributions in tokens) or
``samples`` (one sample per request); industry packs (``pack``) mix atomic scenarios with their
own traffic shares and SLO bounds. Every model a scenario names must be in the model catalogue,
of the kind the scenario serves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from google.protobuf import json_format

from pocgrid.catalog import Catalog
from pocgrid.v1 import evaluator_pb2

SCHEMA_VERSION: Final = 2
#: MLPerf inference load scenarios, as the data file spells them.
LOAD_SCENARIOS: Final = ("offline", "server", "single-stream", "multi-stream")
KINDS: Final = ("llm", "samples")
PACK: Final = "pack"
#: Built-in only: a data-parallel training step across the chips evaluated (hybrid-training).
TRAINING: Final = "training"
#: Largest training run a scenario may ask for (it runs for real, in numpy, on this host).
MAX_TRAINING_WIDTH: Final = 16384
MAX_TRAINING_SAMPLES: Final = 1 << 20
MAX_TRAINING_STEPS: Final = 1000
FIELDS: Final = (
    "finance",
    "manufacturing",
    "aigc",
    "government",
    "medical",
    "embodied",
    "transportation",
)
DISTRIBUTIONS: Final = ("fixed", "uniform", "normal", "lognormal")
PRECISIONS: Final = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
#: Longest prompt or output a scenario may ask for.
MAX_LEN: Final = 131072
MAX_REQUESTS: Final = 100_000
MAX_QPS: Final = 1e6
MAX_CONCURRENCY: Final = 4096
MAX_PASSES: Final = 1000
#: Modes by their data-file spelling.
MODE_NAMES: Final[Mapping[str, evaluator_pb2.EvaluationMode.ValueType]] = {
    "offline": evaluator_pb2.EVALUATION_MODE_OFFLINE,
    "server": evaluator_pb2.EVALUATION_MODE_SERVER,
    "single-stream": evaluator_pb2.EVALUATION_MODE_SINGLE_STREAM,
    "concurrency": evaluator_pb2.EVALUATION_MODE_CONCURRENCY,
    "find-peak": evaluator_pb2.EVALUATION_MODE_FIND_PEAK,
    "sweep": evaluator_pb2.EVALUATION_MODE_SWEEP,
}
MODE_BY_VALUE: Final = {v: k for k, v in MODE_NAMES.items()}
LOAD_SCENARIO: Final[Mapping[str, evaluator_pb2.LoadScenario.ValueType]] = {
    "offline": evaluator_pb2.LOAD_SCENARIO_OFFLINE,
    "server": evaluator_pb2.LOAD_SCENARIO_SERVER,
    "single-stream": evaluator_pb2.LOAD_SCENARIO_SINGLE_STREAM,
    "multi-stream": evaluator_pb2.LOAD_SCENARIO_MULTI_STREAM,
}
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class ScenarioError(ValueError):
    """A scenario definition is wrong: ``field`` names where, ``rule`` what must hold."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


#: Kept for callers of the first release's loader.
ScenarioDataError = ScenarioError


@dataclass(frozen=True, slots=True)
class ScenarioCatalog:
    """The built-in scenarios (atomic ones first, then packs), by name."""

    scenarios: tuple[evaluator_pb2.Scenario, ...]

    def get(self, name: str) -> evaluator_pb2.Scenario | None:
        for s in self.scenarios:
            if s.name == name:
                return s
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scenarios)

    def atomic(self) -> dict[str, evaluator_pb2.Scenario]:
        return {s.name: s for s in self.scenarios if s.kind != PACK}


def load_catalog(catalog: Catalog, path: Path | None = None) -> ScenarioCatalog:
    """Read the scenario file (default: the packaged one) and check it against ``catalog``."""
    if path is None:
        text = (
            resources.files("services.evaluator")
            .joinpath("data/scenarios.json")
            .read_text(encoding="utf-8")
        )
    else:
        text = path.read_text(encoding="utf-8")
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ScenarioError("scenarios file", "must be a JSON object")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ScenarioError("schema_version", f"must be {SCHEMA_VERSION}")
    records = document.get("scenarios")
    if not isinstance(records, list) or not records:
        raise ScenarioError("scenarios", "must be a non-empty list")
    packs = document.get("packs", [])
    if not isinstance(packs, list):
        raise ScenarioError("packs", "must be a list")
    atomic = [_parse(f"scenarios[{i}]", r, pack=False) for i, r in enumerate(records)]
    names = [s.name for s in atomic]
    for i, s in enumerate(atomic):
        check_scenario(s, catalog, f"scenarios[{i}]")
        if names.count(s.name) > 1:
            raise ScenarioError(f"scenarios[{i}].name", f"{s.name!r} appears more than once")
    by_name = {s.name: s for s in atomic}
    parsed_packs = [_parse(f"packs[{i}]", r, pack=True) for i, r in enumerate(packs)]
    for i, p in enumerate(parsed_packs):
        check_pack(p, by_name, f"packs[{i}]")
        if p.name in by_name or [q.name for q in parsed_packs].count(p.name) > 1:
            raise ScenarioError(f"packs[{i}].name", f"{p.name!r} is already a scenario name")
    return ScenarioCatalog((*atomic, *parsed_packs))


def load_scenarios(
    catalog: Catalog, path: Path | None = None
) -> tuple[evaluator_pb2.Scenario, ...]:
    return load_catalog(catalog, path).scenarios


def _parse(where: str, record: object, *, pack: bool) -> evaluator_pb2.Scenario:
    if not isinstance(record, dict):
        raise ScenarioError(where, "must be an object")
    data = dict(record)
    if pack:
        if "kind" in data and data["kind"] != PACK:
            raise ScenarioError(f"{where}.kind", "must be 'pack' (or absent) in packs")
        data["kind"] = PACK
    mode = data.get("default_mode")
    if isinstance(mode, str):
        if mode not in MODE_NAMES:
            raise ScenarioError(f"{where}.default_mode", f"must be one of {', '.join(MODE_NAMES)}")
        data["default_mode"] = evaluator_pb2.EvaluationMode.Name(MODE_NAMES[mode])
    loads = data.get("load_scenarios")
    if isinstance(loads, list):
        bad = [x for x in loads if x not in LOAD_SCENARIO]
        if bad:
            raise ScenarioError(
                f"{where}.load_scenarios", f"must be among {', '.join(LOAD_SCENARIOS)}, got {bad}"
            )
        data["load_scenarios"] = [evaluator_pb2.LoadScenario.Name(LOAD_SCENARIO[x]) for x in loads]
    try:
        return json_format.ParseDict(data, evaluator_pb2.Scenario())
    except json_format.ParseError as exc:
        raise ScenarioError(where, str(exc)) from None


# -- the one validator ----------------------------------------------------------------------


def _finite(field: str, value: float, lo: float, hi: float) -> None:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ScenarioError(field, f"must be a number between {lo:g} and {hi:g} (got {value:g})")


def check_slo(slo: evaluator_pb2.Slo, field: str) -> None:
    for name in ("p99_latency_ms", "p99_ttft_ms", "p99_tpot_ms"):
        _finite(f"{field}.{name}", getattr(slo, name), 0, 3.6e6)
    _finite(f"{field}.min_accuracy_ratio", slo.min_accuracy_ratio, 0, 1)
    if len(slo.source) > 1024:
        raise ScenarioError(f"{field}.source", "must be at most 1024 characters")


def _check_name(field: str, name: str) -> None:
    if not name:
        raise ScenarioError(field, "must not be empty")
    if len(name) > 63 or not set(name) <= _NAME_CHARS or name[0] == "-":
        raise ScenarioError(
            field, "must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
        )


def _check_text(field: str, value: str, limit: int, required: bool = True) -> None:
    if required and not value:
        raise ScenarioError(field, "must not be empty")
    if len(value) > limit:
        raise ScenarioError(field, f"must be at most {limit} characters (got {len(value)})")


def check_distribution(d: evaluator_pb2.LengthDistribution, field: str) -> None:
    if d.kind not in DISTRIBUTIONS:
        raise ScenarioError(f"{field}.kind", f"must be one of {', '.join(DISTRIBUTIONS)}")
    if not 1 <= d.min <= MAX_LEN:
        raise ScenarioError(f"{field}.min", f"must be between 1 and {MAX_LEN} tokens")
    if not d.min <= d.max <= MAX_LEN:
        raise ScenarioError(f"{field}.max", f"must be between min ({d.min}) and {MAX_LEN}")
    if d.kind == "uniform":
        return
    _finite(f"{field}.mean", d.mean, d.min, d.max)
    if d.kind == "fixed":
        return
    _finite(f"{field}.std", d.std, 0, MAX_LEN)
    if d.kind == "lognormal" and not d.std > 0:
        raise ScenarioError(f"{field}.std", "must be > 0 for a lognormal")


def check_imported(s: evaluator_pb2.Scenario, field: str = "scenario") -> None:
    """The rules a scenario over a tenant's imported ONNX model adds (the graph and samples
    themselves are checked against each other by ``services.evaluator.usermodels``)."""
    if s.kind != "samples":
        raise ScenarioError(f"{field}.kind", "a scenario over an imported ONNX model is samples")
    if s.models or s.default_model:
        raise ScenarioError(
            f"{field}.models",
            "must be empty with onnx_model_hash: the imported graph is the scenario's model",
        )
    if not s.onnx_model_hash:
        raise ScenarioError(f"{field}.onnx_model_hash", "is required with sample_set")
    if not s.sample_set:
        raise ScenarioError(
            f"{field}.sample_set", "is required with onnx_model_hash (ImportSampleSet)"
        )
    if s.accuracy_task:
        raise ScenarioError(
            f"{field}.accuracy_task", "must be empty: accuracy is measured on the sample set"
        )
    if s.passes_per_sample > 1:
        raise ScenarioError(f"{field}.passes_per_sample", "an imported graph runs one pass")


def check_scenario(s: evaluator_pb2.Scenario, catalog: Catalog, field: str = "scenario") -> None:
    """Raises ``ScenarioError`` naming the first field that is wrong."""
    _check_name(f"{field}.name", s.name)
    if s.kind not in (*KINDS, TRAINING):
        raise ScenarioError(f"{field}.kind", f"must be one of {', '.join((*KINDS, TRAINING))}")
    _check_text(f"{field}.title", s.title, 256)
    _check_text(f"{field}.description", s.description, 4096, required=False)
    if s.kind == TRAINING:
        check_training(s, field)
        check_slo(s.default_slo, f"{field}.default_slo")
        return
    if s.HasField("training"):
        raise ScenarioError(f"{field}.training", "only training scenarios have one")
    imported = bool(s.onnx_model_hash or s.sample_set)
    if imported:
        check_imported(s, field)
    elif not s.models:
        raise ScenarioError(f"{field}.models", "must name at least one catalogue model")
    known = {m.name: m for m in catalog.models}
    for i, name in enumerate(s.models):
        model = known.get(name)
        if model is None:
            raise ScenarioError(f"{field}.models[{i}]", f"{name!r} is not in the model catalogue")
        is_llm = model.arch is not None
        if is_llm != (s.kind == "llm"):
            want = (
                "an LLM" if s.kind == "llm" else "a non-LLM model (vision, speech, nlp, diffusion)"
            )
            raise ScenarioError(f"{field}.models[{i}]", f"{name} must be {want} for kind {s.kind}")
    if s.default_model and s.default_model not in s.models:
        raise ScenarioError(f"{field}.default_model", "must be one of the scenario's models")
    if s.default_precision and s.default_precision not in PRECISIONS:
        raise ScenarioError(f"{field}.default_precision", f"must be one of {', '.join(PRECISIONS)}")
    if s.kind == "llm":
        if not s.HasField("input_len"):
            raise ScenarioError(f"{field}.input_len", "is required for an llm scenario")
        if not s.HasField("output_len"):
            raise ScenarioError(f"{field}.output_len", "is required for an llm scenario")
        check_distribution(s.input_len, f"{field}.input_len")
        check_distribution(s.output_len, f"{field}.output_len")
    if s.default_mode not in MODE_BY_VALUE:
        raise ScenarioError(f"{field}.default_mode", f"must be one of {', '.join(MODE_NAMES)}")
    _finite(f"{field}.default_qps", s.default_qps, 0, MAX_QPS)
    if s.default_mode in (evaluator_pb2.EVALUATION_MODE_SERVER,) and not s.default_qps > 0:
        raise ScenarioError(f"{field}.default_qps", "must be > 0 when default_mode is server")
    _finite(f"{field}.default_concurrency", s.default_concurrency, 0, MAX_CONCURRENCY)
    _finite(f"{field}.default_requests", s.default_requests, 0, MAX_REQUESTS)
    _finite(f"{field}.passes_per_sample", s.passes_per_sample, 0, MAX_PASSES)
    if s.passes_per_sample and s.kind != "samples":
        raise ScenarioError(f"{field}.passes_per_sample", "is only valid for kind samples")
    check_slo(s.default_slo, f"{field}.default_slo")
    if s.kind == "samples" and (s.default_slo.p99_ttft_ms or s.default_slo.p99_tpot_ms):
        raise ScenarioError(
            f"{field}.default_slo", "a samples scenario bounds p99_latency_ms, not TTFT or TPOT"
        )
    _check_text(f"{field}.accuracy_metric", s.accuracy_metric, 1024, required=False)
    if s.components:
        raise ScenarioError(f"{field}.components", "only packs have components")


def check_training(s: evaluator_pb2.Scenario, field: str) -> None:
    """A training scenario trains the MLP its ``training`` spec describes: no catalogue
    model, no load mode, no request sizes."""
    if s.models or s.default_model:
        raise ScenarioError(f"{field}.models", "a training scenario trains its own MLP: none")
    if not s.HasField("training"):
        raise ScenarioError(f"{field}.training", "is required for a training scenario")
    t = s.training
    for name, hi in (
        ("inputs", MAX_TRAINING_WIDTH),
        ("hidden", MAX_TRAINING_WIDTH),
        ("classes", MAX_TRAINING_WIDTH),
        ("samples", MAX_TRAINING_SAMPLES),
        ("batch", MAX_TRAINING_SAMPLES),
        ("steps", MAX_TRAINING_STEPS),
    ):
        value = getattr(t, name)
        if not 1 <= value <= hi:
            raise ScenarioError(f"{field}.training.{name}", f"must be between 1 and {hi}")
    if t.classes < 2:
        raise ScenarioError(f"{field}.training.classes", "must be >= 2")
    if t.batch > t.samples:
        raise ScenarioError(f"{field}.training.batch", f"must be <= samples ({t.samples})")
    _finite(f"{field}.training.lr", t.lr, 0, 1e3)
    if not t.lr > 0:
        raise ScenarioError(f"{field}.training.lr", "must be > 0")
    if s.HasField("input_len") or s.HasField("output_len") or s.default_mode or s.components:
        raise ScenarioError(
            f"{field}.kind", "a training scenario has no request sizes, load mode or components"
        )


def check_pack(
    p: evaluator_pb2.Scenario, atomic: Mapping[str, evaluator_pb2.Scenario], field: str = "scenario"
) -> None:
    _check_name(f"{field}.name", p.name)
    _check_text(f"{field}.title", p.title, 256)
    if p.field not in FIELDS:
        raise ScenarioError(f"{field}.field", f"must be one of {', '.join(FIELDS)}")
    if not p.components:
        raise ScenarioError(f"{field}.components", "must list at least one atomic scenario")
    total = 0.0
    seen: set[str] = set()
    for i, c in enumerate(p.components):
        where = f"{field}.components[{i}]"
        if c.scenario not in atomic:
            raise ScenarioError(f"{where}.scenario", f"{c.scenario!r} is not an atomic scenario")
        if atomic[c.scenario].kind == TRAINING:
            raise ScenarioError(f"{where}.scenario", "a pack mixes serving scenarios, not training")
        if c.scenario in seen:
            raise ScenarioError(f"{where}.scenario", f"{c.scenario!r} appears more than once")
        seen.add(c.scenario)
        _finite(f"{where}.share", c.share, 0, 1)
        if not c.share > 0:
            raise ScenarioError(f"{where}.share", "must be > 0")
        check_slo(c.slo, f"{where}.slo")
        total += c.share
    if abs(total - 1.0) > 1e-6:
        raise ScenarioError(f"{field}.components", f"shares must sum to 1 (got {total:g})")


def component_slo(
    pack_component: evaluator_pb2.PackComponent, scenario: evaluator_pb2.Scenario
) -> evaluator_pb2.Slo:
    """The component's bounds where it sets them, else its scenario's."""
    slo = evaluator_pb2.Slo()
    slo.CopyFrom(scenario.default_slo)
    for name in ("p99_latency_ms", "p99_ttft_ms", "p99_tpot_ms", "min_accuracy_ratio"):
        value = getattr(pack_component.slo, name)
        if value:
            setattr(slo, name, value)
    return slo


def names(scenarios: Iterable[evaluator_pb2.Scenario]) -> list[str]:
    return [s.name for s in scenarios]
