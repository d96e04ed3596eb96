"""Build pocgrid/catalog/data/{chips,models}.json from the shared public CSVs.

    python tools/build_catalog.py            # write the JSON
    python tools/build_catalog.py --check    # exit 1 if the committed JSON is stale

Numbers are copied from the CSVs, never filled in. The few values the builder adds are listed
per record (``provenance`` for chips, ``derived_fields`` for models) and explained in ``notes``.

The vendor files (``data/vendors/<family>.json``) and ``data/operators.json`` are kept by hand
(``--kept``, default the package's data folder). The builder reads them (which vendor of
chips.csv is which family, and whether it is domestic) and checks them with the built chips:
both modes fail when a kept file does not load, names a chip the chip table lacks, or is not for
a known family.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Final, cast

from pocgrid.catalog import (
    PROVENANCES,
    Catalog,
    CatalogDataError,
    Chip,
    Confidence,
    LlmArch,
    Metric,
    Model,
    ModelKind,
    OperatorCatalog,
    Provenance,
    VendorFamily,
    VendorProfile,
)
from pocgrid.catalog.loader import CHIPS_FILE, MODELS_FILE, SCHEMA_VERSION
from pocgrid.catalog.operators import OPERATORS_FILE, parse_operators_text
from pocgrid.catalog.vendors import extra_profile_files, load_profiles
from tools.shared_data import shared_dir

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE: Final = (shared_dir() or REPO_ROOT.parent / "shared") / "data" / "catalog"
DEFAULT_OUT: Final = REPO_ROOT / "pocgrid" / "catalog" / "data"
GENERATED_BY: Final = "tools/build_catalog.py"


class BuildError(Exception):
    """The CSVs do not match what this builder knows how to translate."""


# --- chips -------------------------------------------------------------------------------

CHIP_COLUMNS: Final = (
    "vendor", "model", "fp32_tflops", "tf32_tflops", "fp16_tflops", "bf16_tflops", "int8_tops",
    "fp8_tflops", "memory_gb", "memory_type", "memory_bw_gbs", "interconnect",
    "interconnect_bw_gbs", "tdp_w", "software_stack", "collective_library", "source", "notes",
    "scope", "estimated_fields", "confidence",
)  # fmt: skip

# CSV column -> catalogue field; the provenance keys use the catalogue names.
NUMERIC_CHIP_COLUMNS: Final[Mapping[str, str]] = {
    "fp32_tflops": "peak_tflops.fp32",
    "tf32_tflops": "peak_tflops.tf32",
    "fp16_tflops": "peak_tflops.fp16",
    "bf16_tflops": "peak_tflops.bf16",
    "int8_tops": "peak_tflops.int8",
    "fp8_tflops": "peak_tflops.fp8",
    # Marketed HBM/GDDR sizes are binary (an "80GB" A100 reports 81920 MiB): GiB.
    "memory_gb": "memory_gib",
    "memory_bw_gbs": "memory_bw_gbs",
    "interconnect_bw_gbs": "interconnect_bw_gbs",
    "tdp_w": "tdp_w",
}
# Text columns that a row may also mark as estimated.
TEXT_ESTIMABLE_COLUMNS: Final = frozenset({"memory_type"})


# Slugs are ids other services store, so they are pinned here rather than derived from
# display text that an editor of the CSV may reword.
CHIP_SLUGS: Final[Mapping[str, str]] = {
    "Ascend 910B (generic, commonly cited)": "ascend-910b",
    "Ascend 910B2": "ascend-910b2",
    "Ascend 910B3": "ascend-910b3",
    "Ascend 310P (1 of 2 chips on Atlas 300I Duo)": "ascend-310p",
    "Ascend 910 (2019, reference)": "ascend-910",
    "Ascend 910C (reference)": "ascend-910c",
    "MLU370-X8": "mlu370-x8",
    "MLU590": "mlu590",
    "DCU Z100 / Z100L": "dcu-z100",
    "DCU K100": "dcu-k100",
    "DCU K100-AI": "dcu-k100-ai",
    "DCU BW200 (extra)": "dcu-bw200",
    "R200 (XPU-R, 2nd-gen Kunlun chip, PCIe)": "kunlun-r200",
    "R300 (OAM module, 2nd-gen chip; R480-X8 baseboard)": "kunlun-r300",
    "P800": "kunlun-p800",
    "MTT S4000": "mtt-s4000",
    "MTT S80 (consumer)": "mtt-s80",
    "MTT S5000 (extra, 2025)": "mtt-s5000",
    "BI-V150 (Tiangai 150)": "bi-v150",
    "BI-V100 (Tiangai 100, reference)": "bi-v100",
    "MR-V100 (Zhikai 100, inference)": "mr-v100",
    "Xiyun C500": "metax-c500",
    "Xiyun C550": "metax-c550",
    "BR100": "br100",
    "BR104": "br104",
    "S60 (GCU, inference)": "enflame-s60",
    "CloudBlazer T20 (DTU 2.0, training)": "enflame-t20",
    "CloudBlazer i20 (inference)": "enflame-i20",
    "A100 80GB SXM": "a100-80gb-sxm",
    "H100 80GB SXM": "h100-80gb-sxm",
    "H20 96GB": "h20-96gb",
    "L20 48GB": "l20-48gb",
    "GeForce RTX 4090": "rtx-4090",
    "H200 141GB SXM": "h200-141gb-sxm",
    "Instinct MI300X": "mi300x",
}
_SLUG_PART = re.compile(r"[^a-z0-9]+")


def chip_slug(display_name: str, family: VendorFamily) -> str:
    """Pinned slug, or for a row added later: family prefix + product name without qualifiers."""
    if display_name in CHIP_SLUGS:
        return CHIP_SLUGS[display_name]
    bare = _SLUG_PART.sub("-", re.sub(r"\(.*?\)", "", display_name).lower()).strip("-")
    return bare if bare.startswith(family) else f"{family}-{bare}"


# Something a reader could look up: a URL, a domain, an owner/repo path, a named document.
_CITATION = re.compile(
    r"https?://|\b[\w-]+\.(?:com|org|net|io|dev|fi|cz|es|it|br|cn|ai|co|de|jp)\b"
    r"|\w[\w.-]*/[\w.-]+[:/]|\b(?:datasheet|whitepaper|paper|README|docs|arXiv|et al)\b"
)


def split_sources(text: str) -> tuple[str, ...]:
    """Split a source cell into citations on ';' outside parentheses.

    Citations nest ';' inside parentheses, and a citation ending in ``: `` quotes its figures
    as a ';'-separated list; list items that cite nothing stay with the citation they quote.
    A cell that only says no source was found yields no sources.
    """
    if text.strip().lower().startswith("none found"):
        return ()
    segments: list[tuple[str, bool]] = []  # (text, opens a quoted list at depth 0)
    depth = 0
    current: list[str] = []
    opens_list = False
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == ":" and depth == 0 and text[i + 1 : i + 2] == " ":
            opens_list = True
        if ch == ";" and depth == 0:
            segments.append(("".join(current).strip(), opens_list))
            current, opens_list = [], False
        else:
            current.append(ch)
    segments.append(("".join(current).strip(), opens_list))

    sources: list[str] = []
    in_list = False
    for segment, opens in segments:
        if not segment:
            continue
        if sources and in_list and not _CITATION.search(segment):
            sources[-1] = f"{sources[-1]}; {segment}"
            continue
        sources.append(segment)
        in_list = opens
    return tuple(sources)


def _opt_text(value: str) -> str | None:
    value = value.strip()
    return value or None


def _number(row: Mapping[str, str], column: str, where: str) -> float | None:
    cell = row[column].strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        raise BuildError(f"{where}: {column}={cell!r} is not a number") from None


def vendors_by_source_name(
    profiles: Mapping[VendorFamily, VendorProfile],
) -> dict[str, VendorProfile]:
    """chips.csv vendor text -> the family file that claims it (its ``source_vendor``)."""
    by_name: dict[str, VendorProfile] = {}
    for profile in profiles.values():
        if profile.source_vendor in by_name:
            other = by_name[profile.source_vendor].family
            raise BuildError(
                f"vendors/{profile.family}.json and vendors/{other}.json both claim "
                f"source_vendor {profile.source_vendor!r}"
            )
        by_name[profile.source_vendor] = profile
    return by_name


def build_chip(row: Mapping[str, str], vendors: Mapping[str, VendorProfile]) -> Chip:
    display = row["model"].strip()
    where = f"chips.csv {display!r}"
    profile = vendors.get(row["vendor"])
    if profile is None:
        raise BuildError(
            f"{where}: unknown vendor {row['vendor']!r}; no vendors/<family>.json has it as "
            "source_vendor"
        )
    vendor, family = profile.vendor, profile.family

    values: dict[str, float] = {}
    for column, field in NUMERIC_CHIP_COLUMNS.items():
        value = _number(row, column, where)
        if value is not None:
            values[field] = value

    estimated = {c.strip() for c in row["estimated_fields"].split(";") if c.strip()}
    provenance: dict[str, Provenance] = dict.fromkeys(values, "spec")
    for column in sorted(estimated):
        if column in NUMERIC_CHIP_COLUMNS:
            field = NUMERIC_CHIP_COLUMNS[column]
            if field not in values:
                raise BuildError(f"{where}: {column} is marked estimated but empty")
            provenance[field] = "estimated"
        elif column in TEXT_ESTIMABLE_COLUMNS:
            if not row[column].strip():
                raise BuildError(f"{where}: {column} is marked estimated but empty")
            provenance[column] = "estimated"
        else:
            raise BuildError(f"{where}: unknown estimated field {column!r}")

    return Chip(
        name=chip_slug(display, family),
        display_name=display,
        vendor=vendor,
        vendor_family=family,
        domestic=profile.domestic,
        memory_gib=values.get("memory_gib"),
        memory_bw_gbs=values.get("memory_bw_gbs"),
        interconnect_bw_gbs=values.get("interconnect_bw_gbs"),
        tdp_w=values.get("tdp_w"),
        peak_tflops={
            k.removeprefix("peak_tflops."): v
            for k, v in values.items()
            if k.startswith("peak_tflops.")
        },
        memory_type=_opt_text(row["memory_type"]),
        interconnect=_opt_text(row["interconnect"]),
        software_stack=_opt_text(row["software_stack"]),
        collective_library=_opt_text(row["collective_library"]),
        scope=row["scope"].strip(),
        confidence=row["confidence"].strip(),
        notes=row["notes"].strip(),
        sources=split_sources(row["source"]),
        provenance=provenance,
    )


# --- LLMs --------------------------------------------------------------------------------

LLM_COLUMNS: Final = (
    "name", "params_b", "active_params_b", "num_layers", "hidden_size", "num_attention_heads",
    "num_kv_heads", "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
    "num_experts", "experts_per_token", "moe_intermediate_size", "attention_type", "activation",
    "source", "notes",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class NoteFact:
    """An architecture value stated only in prose; ``phrase`` must occur verbatim in the notes
    of the evidence row so that rewording the CSV fails the build instead of silently keeping
    it. ``derived`` marks a value read from a description rather than a stated number."""

    field: str
    value: int
    phrase: str
    derived: bool = False


_DEEPSEEK_V3_FACTS: Final = (
    NoteFact("q_lora_rank", 1536, "q_lora_rank 1536"),
    NoteFact("kv_lora_rank", 512, "kv_lora_rank 512"),
    NoteFact("qk_nope_head_dim", 128, "qk_nope_head_dim 128"),
    NoteFact("qk_rope_head_dim", 64, "qk_rope_head_dim 64"),
    NoteFact("v_head_dim", 128, "v_head_dim 128"),
    NoteFact("first_k_dense_replace", 3, "first_k_dense_replace 3"),
    NoteFact("num_shared_experts", 1, "1 shared expert"),
)
# model -> (row whose notes state the facts, facts). Only what the shared notes state.
ARCH_NOTE_FACTS: Final[Mapping[str, tuple[str, tuple[NoteFact, ...]]]] = {
    "DeepSeek-V3": ("DeepSeek-V3", _DEEPSEEK_V3_FACTS),
    "DeepSeek-R1": ("DeepSeek-V3", _DEEPSEEK_V3_FACTS),
    "Mistral-7B-v0.1": (
        "Mistral-7B-v0.1",
        (NoteFact("sliding_window", 4096, "v0.1: sliding_window 4096"),),
    ),
    "Gemma-2-9B": (
        "Gemma-2-9B",
        (
            NoteFact("sliding_window", 4096, "alternating local sliding-window (4096)"),
            # Alternating local/global = every 2nd layer global.
            NoteFact(
                "sliding_window_pattern", 2, "alternating local sliding-window (4096)", derived=True
            ),
        ),
    ),
}
# A row borrowing another row's facts must say that it shares its architecture.
SAME_ARCH_PHRASE: Final = "Same architecture/config as {row}"


def _int(row: Mapping[str, str], column: str, where: str) -> int | None:
    cell = row[column].strip()
    if not cell:
        return None
    if not re.fullmatch(r"\d+", cell):
        raise BuildError(f"{where}: {column}={cell!r} is not an integer")
    return int(cell)


def _req_int(row: Mapping[str, str], column: str, where: str) -> int:
    value = _int(row, column, where)
    if value is None:
        raise BuildError(f"{where}: {column} is required")
    return value


def _note_facts(
    name: str, rows: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, int], list[str], str]:
    """Architecture extras stated in the notes, those of them derived, and their citation."""
    if name not in ARCH_NOTE_FACTS:
        return {}, [], ""
    evidence_row, facts = ARCH_NOTE_FACTS[name]
    if evidence_row not in rows:
        raise BuildError(f"models.csv {name!r}: evidence row {evidence_row!r} is missing")
    if evidence_row != name:
        phrase = SAME_ARCH_PHRASE.format(row=evidence_row)
        if phrase not in rows[name]["notes"]:
            raise BuildError(f"models.csv {name!r}: notes no longer say {phrase!r}")
    notes = rows[evidence_row]["notes"]
    for fact in facts:
        if fact.phrase not in notes:
            raise BuildError(
                f"models.csv {name!r}: {fact.field}={fact.value} needs {fact.phrase!r} "
                f"in the notes of {evidence_row!r}"
            )
    values = {f.field: f.value for f in facts}
    derived = [f"arch.{f.field}" for f in facts if f.derived]
    listed = ", ".join(
        f"{f.field} {f.value}" + (f" (read from {f.phrase!r})" if f.derived else "") for f in facts
    )
    whose = "this row's notes" if evidence_row == name else f"the {evidence_row} row's notes"
    return values, derived, f"[catalog: {listed} taken from {whose} (shared NOTES.md section 4).]"


def build_llm(row: Mapping[str, str], rows: Mapping[str, Mapping[str, str]]) -> Model:
    name = row["name"].strip()
    where = f"models.csv {name!r}"
    hidden = _req_int(row, "hidden_size", where)
    heads = _req_int(row, "num_attention_heads", where)
    derived: list[str] = []
    annotations: list[str] = []

    head_dim = _int(row, "head_dim", where)
    if head_dim is None:
        if hidden % heads:
            raise BuildError(f"{where}: head_dim empty and hidden {hidden} % heads {heads} != 0")
        head_dim = hidden // heads
        derived.append("arch.head_dim")
        annotations.append(f"[catalog: head_dim = hidden_size / num_attention_heads = {head_dim}.]")

    extras, derived_extras, citation = _note_facts(name, rows)
    derived += derived_extras
    if citation:
        annotations.append(citation)

    params_b = _number(row, "params_b", where)
    if params_b is None:
        raise BuildError(f"{where}: params_b is required")
    arch = LlmArch(
        num_layers=_req_int(row, "num_layers", where),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=_req_int(row, "num_kv_heads", where),
        head_dim=head_dim,
        intermediate_size=_req_int(row, "intermediate_size", where),
        vocab_size=_req_int(row, "vocab_size", where),
        max_position_embeddings=_req_int(row, "max_position_embeddings", where),
        attention_type=row["attention_type"].strip(),
        activation=row["activation"].strip(),
        num_experts=_int(row, "num_experts", where),
        experts_per_token=_int(row, "experts_per_token", where),
        moe_intermediate_size=_int(row, "moe_intermediate_size", where),
        active_params_b=_number(row, "active_params_b", where),
        **extras,
    )
    return Model(
        name=name,
        kind="llm",
        task="text-generation",
        params_b=params_b,
        sources=split_sources(row["source"]),
        notes=" ".join([row["notes"].strip(), *annotations]).strip(),
        arch=arch,
        derived_fields=tuple(derived),
    )


# --- atomic (non-LLM) models -------------------------------------------------------------

ATOMIC_COLUMNS: Final = (
    "name", "task", "params_m", "compute_g", "compute_convention", "input", "architecture",
    "metric", "metric_value", "source", "notes",
)  # fmt: skip

ATOMIC_TASKS: Final[Mapping[str, tuple[ModelKind, str]]] = {
    "image classification": ("vision", "image-classification"),
    "object detection": ("vision", "object-detection"),
    "speech recognition (enc-dec)": ("speech", "speech-recognition"),
    # bert-base-uncased is a pretrained masked-LM checkpoint (its Hub pipeline tag);
    # classification needs a fine-tuned head.
    "NLU encoder": ("nlp", "fill-mask"),
}
# Which tool's FLOP convention a compute figure follows (shared NOTES.md section 1).
COMPUTE_IS_MACS: Final[Mapping[str, bool]] = {"torchvision": True, "Ultralytics": False}
_TRAILING_NOTE = re.compile(r"^(?P<body>.*?)\s*\((?P<note>[^()]*)\)\s*$")


def parse_metrics(names: str, values: str, where: str) -> tuple[Metric, ...]:
    """``"ImageNet-1K top-1 / top-5"`` + ``"76.13 / 92.862"`` -> two metrics.

    A one-word later name inherits the first name's qualifier ("top-5" -> "ImageNet-1K top-5");
    a trailing parenthetical on the values is a note, not a number.
    """
    names, values = names.strip(), values.strip()
    if not names:
        return ()
    parts = [p.strip() for p in names.split(" / ")]
    prefix = parts[0].rsplit(" ", 1)[0] + " " if " " in parts[0] else ""
    full_names = [parts[0]] + [p if " " in p else prefix + p for p in parts[1:]]

    note: str | None = None
    match = _TRAILING_NOTE.match(values)
    if match:
        values, note = match["body"], match["note"]
    numbers: list[float | None] = []
    for cell in (v.strip() for v in values.split(" / ")) if values else ():
        try:
            numbers.append(float(cell))
        except ValueError:
            raise BuildError(f"{where}: metric value {cell!r} is not a number") from None
    if not numbers:
        numbers = [None] * len(full_names)
    if len(numbers) != len(full_names):
        raise BuildError(f"{where}: {len(full_names)} metric names but {len(numbers)} values")
    return tuple(
        Metric(name=n, value=v, note=note) for n, v in zip(full_names, numbers, strict=True)
    )


def build_atomic(row: Mapping[str, str]) -> Model:
    name = row["name"].strip()
    where = f"atomic_models.csv {name!r}"
    task_text = row["task"].strip()
    if task_text not in ATOMIC_TASKS:
        raise BuildError(f"{where}: unknown task {task_text!r}; add it to ATOMIC_TASKS")
    kind, task = ATOMIC_TASKS[task_text]
    convention = row["compute_convention"].strip()
    annotations = [f"Compute convention (source): {convention}."] if convention else []
    derived: list[str] = []

    params_m = row["params_m"].strip()
    if not params_m:
        raise BuildError(f"{where}: params_m is required")
    # Decimal keeps 25.557032 M -> 0.025557032 B exact instead of a float-division tail.
    params_b = float(Decimal(params_m) / 1000)

    gflops: float | None = None
    compute = row["compute_g"].strip()
    if compute:
        tool = next((t for t in COMPUTE_IS_MACS if convention.startswith(t)), None)
        if tool is None:
            raise BuildError(f"{where}: cannot tell FLOPs from MACs in {convention!r}")
        if COMPUTE_IS_MACS[tool]:
            gflops = float(Decimal(compute) * 2)
            derived.append("gflops")
            annotations.append(
                f"[catalog: gflops = 2 x {compute} GMACs = {gflops:g} GFLOP per sample "
                "(1 MAC = 2 FLOPs).]"
            )
        else:
            gflops = float(Decimal(compute))
            annotations.append("[catalog: gflops copied as published; it already counts 2 x MACs.]")

    return Model(
        name=name,
        kind=kind,
        task=task,
        params_b=params_b,
        sources=split_sources(row["source"]),
        notes=" ".join([row["notes"].strip(), *annotations]).strip(),
        gflops=gflops,
        input_shape=_opt_text(row["input"]),
        architecture=_opt_text(row["architecture"]),
        reference_metrics=parse_metrics(row["metric"], row["metric_value"], where),
        derived_fields=tuple(derived),
    )


# --- rendering ---------------------------------------------------------------------------


def read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != tuple(columns):
            raise BuildError(f"{path.name}: header {reader.fieldnames} != expected {columns}")
        return [dict(row) for row in reader]


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def render(document: Mapping[str, object]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_kept(data_dir: Path) -> tuple[Mapping[VendorFamily, VendorProfile], OperatorCatalog]:
    """The hand-kept vendor files and operator coverage of ``data_dir``, loaded and typed."""
    extra = extra_profile_files(data_dir)
    if extra:
        raise BuildError(f"vendors/: {extra} are for no known family (VendorFamily)")

    def read(name: str) -> str:
        return (data_dir / name).read_text(encoding="utf-8")

    try:
        profiles = load_profiles(read)
        operators = parse_operators_text(read(OPERATORS_FILE), OPERATORS_FILE)
    except (CatalogDataError, FileNotFoundError) as exc:
        raise BuildError(str(exc)) from None
    return profiles, operators


SUPPLEMENT_FILE: Final = "chip_supplement.json"
SUPPLEMENT_SCHEMA: Final = 1
_CONFIDENCE_WORDS: Final = ("high", "medium", "low")


def row_confidence(text: str) -> Confidence:
    """The CSV's free-text row confidence as one word; ranges take their lower end."""
    words = re.findall(r"high|medium|low", text.lower())
    if not words:
        return "low"
    worst = max(_CONFIDENCE_WORDS.index(w) for w in words[:2])
    return _CONFIDENCE_WORDS[worst]


def with_confidence(chip: Chip) -> Chip:
    """Every figure gets a confidence: estimated ones low, published ones the row's."""
    row = row_confidence(chip.confidence)
    conf: dict[str, Confidence] = {}
    for key, prov in chip.provenance.items():
        conf[key] = "low" if prov == "estimated" else row
    return replace(chip, figure_confidence={**conf, **chip.figure_confidence})


def load_supplement(data_dir: Path) -> Mapping[str, Mapping[str, object]]:
    path = data_dir / SUPPLEMENT_FILE
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema_version") != SUPPLEMENT_SCHEMA:
        raise BuildError(f"{SUPPLEMENT_FILE}: schema_version must be {SUPPLEMENT_SCHEMA}")
    chips = doc.get("chips")
    if not isinstance(chips, dict):
        raise BuildError(f"{SUPPLEMENT_FILE}: chips must be an object")
    return cast("Mapping[str, Mapping[str, object]]", chips)


_SUPPLEMENT_FIELDS: Final = frozenset(NUMERIC_CHIP_COLUMNS.values())


def apply_supplement(chip: Chip, entry: Mapping[str, object]) -> Chip:
    """Fill the figures chips.csv leaves empty, with their own sources, provenance, confidence
    and (for estimates) method. Never overrides a figure the CSV has."""
    where = f"{SUPPLEMENT_FILE} {chip.display_name!r}"
    fields = entry.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise BuildError(f"{where}: fields must be a non-empty object")
    values: dict[str, float] = {}
    provenance: dict[str, Provenance] = dict(chip.provenance)
    confidence: dict[str, Confidence] = dict(chip.figure_confidence)
    methods: dict[str, str] = dict(chip.estimation_methods)
    sources = list(chip.sources)
    for key, raw in fields.items():
        if key not in _SUPPLEMENT_FIELDS:
            raise BuildError(f"{where}: {key!r} is not a numeric chip field")
        if not isinstance(raw, dict):
            raise BuildError(f"{where}: {key} must be an object")
        if key in chip.provenance:
            raise BuildError(
                f"{where}: {key} is already in chips.csv; a supplement never overrides"
            )
        value = raw.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise BuildError(f"{where}: {key}.value must be a positive number")
        prov = raw.get("provenance")
        if prov not in PROVENANCES:
            raise BuildError(f"{where}: {key}.provenance must be one of {PROVENANCES}")
        conf = raw.get("confidence")
        if conf not in _CONFIDENCE_WORDS:
            raise BuildError(f"{where}: {key}.confidence must be one of {_CONFIDENCE_WORDS}")
        cited = raw.get("sources")
        if not isinstance(cited, list) or not cited or not all(isinstance(c, str) for c in cited):
            raise BuildError(f"{where}: {key}.sources must list at least one source")
        method = raw.get("method")
        if prov == "estimated":
            if not isinstance(method, str) or not method:
                raise BuildError(f"{where}: {key} is estimated and needs its method")
            methods[key] = method
        values[key] = float(value)
        provenance[key] = cast("Provenance", prov)
        confidence[key] = cast("Confidence", conf)
        sources.extend(c for c in cited if c not in sources)
    peaks = {k.removeprefix("peak_tflops."): v for k, v in values.items() if "." in k}
    note = entry.get("note")
    return replace(
        chip,
        memory_gib=values.get("memory_gib", chip.memory_gib),
        memory_bw_gbs=values.get("memory_bw_gbs", chip.memory_bw_gbs),
        interconnect_bw_gbs=values.get("interconnect_bw_gbs", chip.interconnect_bw_gbs),
        tdp_w=values.get("tdp_w", chip.tdp_w),
        peak_tflops={**chip.peak_tflops, **peaks},
        provenance=provenance,
        figure_confidence=confidence,
        estimation_methods=methods,
        sources=tuple(sources),
        notes=chip.notes + (f" {note}" if isinstance(note, str) and note else ""),
    )


MODEL_SUPPLEMENT_FILE: Final = "model_supplement.json"
_STAGES: Final = ("text_encoder", "denoiser", "vae_decoder")


def _positive(entry: Mapping[str, object], key: str, where: str) -> Decimal:
    raw = entry.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise BuildError(f"{where}: {key} must be a positive number")
    return Decimal(str(raw))


def build_supplement_model(entry: Mapping[str, object]) -> Model:
    """One hand-kept model: published stage MACs in, FLOPs per call and total parameters out."""
    name = entry.get("name")
    where = f"{MODEL_SUPPLEMENT_FILE} {name!r}"
    diffusion = entry.get("diffusion")
    if not isinstance(diffusion, dict) or not isinstance(diffusion.get("stages"), dict):
        raise BuildError(f"{where}: diffusion.stages must be an object")
    stages = cast("Mapping[str, object]", diffusion["stages"])
    if set(stages) != set(_STAGES):
        raise BuildError(f"{where}: diffusion.stages must be exactly {_STAGES}")
    arch: dict[str, object] = {k: v for k, v in diffusion.items() if k != "stages"}
    params_m = Decimal(0)
    annotations: list[str] = []
    for stage in _STAGES:
        raw = stages[stage]
        if not isinstance(raw, dict):
            raise BuildError(f"{where}: diffusion.stages.{stage} must be an object")
        figures = cast("Mapping[str, object]", raw)
        p = _positive(figures, "params_m", f"{where} {stage}")
        macs = _positive(figures, "macs_m", f"{where} {stage}")
        batch = _positive(figures, "macs_batch", f"{where} {stage}")
        native = _positive(figures, "native_activation_mb", f"{where} {stage}")
        # Published per call of the export, and a call may hold several items (the UNet's two
        # latents): the catalogue keeps figures per item.
        gflops = macs * 2 / 1000 / batch
        activation_mb = native / batch
        arch[stage] = {
            "params_m": float(p),
            "gflops": float(gflops),
            "activation_mb": float(activation_mb),
        }
        params_m += p
        annotations.append(
            f"[catalog: {stage} gflops = 2 x {macs} M MACs / {batch} items per call = {gflops:g};"
            f" activation_mb = {native} / {batch} = {activation_mb:g}.]"
        )
    doc = {k: v for k, v in entry.items() if k != "diffusion"}
    doc["diffusion"] = arch
    doc["params_b"] = float(params_m / 1000)
    doc["derived_fields"] = [
        "params_b",
        *(f"diffusion.{s}.{f}" for s in _STAGES for f in ("gflops", "activation_mb")),
    ]
    total = f"[catalog: params_b = sum of the stages' {params_m} M.]"
    doc["notes"] = " ".join([str(entry.get("notes", "")), total, *annotations]).strip()
    try:
        return Model.from_dict(doc)
    except CatalogDataError as exc:
        raise BuildError(f"{where}: {exc}") from None


def load_model_supplement(data_dir: Path) -> list[Model]:
    path = data_dir / MODEL_SUPPLEMENT_FILE
    if not path.is_file():
        return []
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema_version") != SUPPLEMENT_SCHEMA:
        raise BuildError(f"{MODEL_SUPPLEMENT_FILE}: schema_version must be {SUPPLEMENT_SCHEMA}")
    entries = doc.get("models")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BuildError(f"{MODEL_SUPPLEMENT_FILE}: models must be a list of objects")
    return [build_supplement_model(cast("Mapping[str, object]", e)) for e in entries]


def build(source: Path, data_dir: Path = DEFAULT_OUT) -> dict[str, str]:
    """File name -> exact text to write; ``data_dir`` holds the kept vendor files."""
    chips_csv = source / "chips.csv"
    models_csv = source / "models.csv"
    atomic_csv = source / "atomic_models.csv"

    profiles, operators = load_kept(data_dir)
    vendors = vendors_by_source_name(profiles)
    chips = [build_chip(r, vendors) for r in read_csv(chips_csv, CHIP_COLUMNS)]
    supplement = load_supplement(data_dir)
    unknown = set(supplement) - {c.display_name for c in chips}
    if unknown:
        raise BuildError(f"{SUPPLEMENT_FILE}: no chips.csv row for {sorted(unknown)}")
    chips = [
        with_confidence(
            apply_supplement(c, supplement[c.display_name]) if c.display_name in supplement else c
        )
        for c in chips
    ]
    llm_rows = read_csv(models_csv, LLM_COLUMNS)
    by_name = {r["name"].strip(): r for r in llm_rows}
    models = [build_llm(r, by_name) for r in llm_rows]
    models += [build_atomic(r) for r in read_csv(atomic_csv, ATOMIC_COLUMNS)]
    kept_models = load_model_supplement(data_dir)
    models += kept_models

    try:
        # Rejects duplicate names, and kept per-chip entries for chips the table lacks.
        Catalog(chips, models, profiles, operators)
    except CatalogDataError as exc:
        raise BuildError(str(exc)) from None
    for chip in chips:
        if Chip.from_dict(chip.to_dict()) != chip:
            raise BuildError(f"chip {chip.name!r} does not survive a JSON round trip")
    for model in models:
        if Model.from_dict(model.to_dict()) != model:
            raise BuildError(f"model {model.name!r} does not survive a JSON round trip")

    return {
        CHIPS_FILE: render(
            {
                "schema_version": SCHEMA_VERSION,
                "generated_by": GENERATED_BY,
                "inputs": {
                    chips_csv.name: _digest(chips_csv),
                    **(
                        {SUPPLEMENT_FILE: _digest(data_dir / SUPPLEMENT_FILE)} if supplement else {}
                    ),
                },
                "chips": [c.to_dict() for c in chips],
            }
        ),
        MODELS_FILE: render(
            {
                "schema_version": SCHEMA_VERSION,
                "generated_by": GENERATED_BY,
                "inputs": {
                    **{p.name: _digest(p) for p in (models_csv, atomic_csv)},
                    **(
                        {MODEL_SUPPLEMENT_FILE: _digest(data_dir / MODEL_SUPPLEMENT_FILE)}
                        if kept_models
                        else {}
                    ),
                },
                "models": [m.to_dict() for m in models],
            }
        ),
    }


def stale_files(outputs: Mapping[str, str], out_dir: Path) -> Iterator[str]:
    for file_name, text in outputs.items():
        path = out_dir / file_name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            yield file_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CSV directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON directory")
    parser.add_argument(
        "--kept",
        type=Path,
        default=DEFAULT_OUT,
        help="directory of the hand-kept vendors/*.json and operators.json",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the JSON is out of date"
    )
    args = parser.parse_args(argv)
    source: Path = args.source
    out: Path = args.out

    if not source.is_dir():
        print(f"build_catalog: source directory {source} not found", file=sys.stderr)
        return 2
    try:
        outputs = build(source, args.kept)
    except BuildError as exc:
        print(f"build_catalog: {exc}", file=sys.stderr)
        return 2

    stale = list(stale_files(outputs, out))
    if args.check:
        for file_name in stale:
            print(f"build_catalog: {out / file_name} is out of date", file=sys.stderr)
        if stale:
            print("build_catalog: run `python -m tools.build_catalog` to refresh", file=sys.stderr)
        return 1 if stale else 0

    out.mkdir(parents=True, exist_ok=True)
    for file_name in stale:
        # Bytes, so that no platform newline translation changes the committed form.
        (out / file_name).write_bytes(outputs[file_name].encode("utf-8"))
    print(f"build_catalog: {len(stale)} of {len(outputs)} files written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
