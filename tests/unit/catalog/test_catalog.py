"""The chip/model catalogue: reproducible build, honest numbers, and the loader API."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from pocgrid.catalog import (
    Catalog,
    CatalogDataError,
    Chip,
    Model,
    UnknownChipError,
    UnknownModelError,
    default_catalog,
)
from tools.shared_data import shared_dir

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED = (shared_dir() or REPO_ROOT.parent / "shared") / "data" / "catalog"
DATA = REPO_ROOT / "pocgrid" / "catalog" / "data"

# Fails, with where it looked, when the shared CSVs are missing (tests/conftest.py).
needs_shared = pytest.mark.usefixtures("shared_catalog")

NUMERIC_CHIP_COLUMNS = {
    "fp32_tflops": "peak_tflops.fp32",
    "tf32_tflops": "peak_tflops.tf32",
    "fp16_tflops": "peak_tflops.fp16",
    "bf16_tflops": "peak_tflops.bf16",
    "int8_tops": "peak_tflops.int8",
    "fp8_tflops": "peak_tflops.fp8",
    "memory_gb": "memory_gib",
    "memory_bw_gbs": "memory_bw_gbs",
    "interconnect_bw_gbs": "interconnect_bw_gbs",
    "tdp_w": "tdp_w",
}
LLM_INT_COLUMNS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "num_experts",
    "experts_per_token",
    "moe_intermediate_size",
)
NOTE_EXTRA_FIELDS = (
    "num_shared_experts",
    "first_k_dense_replace",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "sliding_window",
    "sliding_window_pattern",
)


def _builder(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.build_catalog", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rows(name: str) -> list[dict[str, str]]:
    with (SHARED / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _get(chip: Chip, field: str) -> float | None:
    if field.startswith("peak_tflops."):
        return chip.peak(field.removeprefix("peak_tflops."))
    value = getattr(chip, field)
    assert value is None or isinstance(value, float)
    return value


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(DATA)


# --- the build ---------------------------------------------------------------------------


@needs_shared
def test_committed_json_matches_builder() -> None:
    result = _builder("--check")
    assert result.returncode == 0, result.stderr


@needs_shared
def test_builder_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    for run in ("a", "b"):
        result = _builder("--source", SHARED, "--out", tmp_path / run)
        assert result.returncode == 0, result.stderr
    for name in ("chips.json", "models.json"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes()
        assert first == (DATA / name).read_bytes()
        text = first.decode("utf-8")
        assert text.endswith("}\n")
        canonical = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
        assert canonical + "\n" == text


@needs_shared
def test_check_mode_flags_stale_json(tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    stale = tmp_path / "chips.json"
    stale.write_text(stale.read_text(encoding="utf-8").replace("353.9", "354.0"), encoding="utf-8")
    result = _builder("--check", "--out", tmp_path)
    assert result.returncode == 1
    assert "chips.json is out of date" in result.stderr
    assert "models.json" not in result.stderr


def test_missing_source_directory_is_reported(tmp_path: Path) -> None:
    result = _builder("--check", "--source", tmp_path / "absent")
    assert result.returncode == 2
    assert "not found" in result.stderr


# --- coverage ----------------------------------------------------------------------------


def test_enough_emulatable_chips(catalog: Catalog) -> None:
    emulatable = catalog.emulatable_chips()
    assert len(emulatable) >= 12
    assert sum(c.domestic for c in emulatable) >= 10
    assert all(c.emulatable for c in emulatable)
    for chip in emulatable:
        assert chip.memory_gib is not None and chip.memory_bw_gbs is not None
        assert chip.peak("fp16") is not None or chip.peak("bf16") is not None


def test_model_coverage(catalog: Catalog) -> None:
    assert len(catalog.models) >= 24
    kinds = {m.kind for m in catalog.models}
    assert kinds == {"llm", "vision", "speech", "nlp", "diffusion"}
    assert all((m.arch is not None) == (m.kind == "llm") for m in catalog.models)
    assert all((m.diffusion is not None) == (m.kind == "diffusion") for m in catalog.models)


@needs_shared
def test_every_csv_row_is_in_the_catalogue(catalog: Catalog) -> None:
    assert [c.display_name for c in catalog.chips] == [r["model"] for r in _rows("chips.csv")]
    names = [r["name"] for r in _rows("models.csv") + _rows("atomic_models.csv")]
    # Then the kept supplement's models (data/model_supplement.json), which the CSVs lack.
    kept = json.loads((DATA / "model_supplement.json").read_text(encoding="utf-8"))
    names += [m["name"] for m in kept["models"]]
    assert [m.name for m in catalog.models] == names


def test_slugs_are_stable_lowercase_ids(catalog: Catalog) -> None:
    for chip in catalog.chips:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", chip.name), chip.name
    expected = {
        "ascend-910b2": "ascend",
        "mlu370-x8": "cambricon",
        "dcu-k100-ai": "hygon",
        "kunlun-r300": "kunlunxin",
        "mtt-s4000": "moorethreads",
        "bi-v150": "iluvatar",
        "metax-c550": "metax",
        "br104": "biren",
        "enflame-s60": "enflame",
        "a100-80gb-sxm": "nvidia",
        "h100-80gb-sxm": "nvidia",
        "mi300x": "amd",
    }
    for slug, family in expected.items():
        chip = catalog.chip(slug)
        assert chip.vendor_family == family
        assert chip.domestic is (family not in {"nvidia", "amd"})


# --- honesty of the numbers --------------------------------------------------------------


def test_sources_are_carried(catalog: Catalog) -> None:
    for model in catalog.models:
        assert model.sources, model.name
        assert all(s.strip() for s in model.sources)
    for chip in catalog.chips:
        has_numbers = bool(chip.peak_tflops) or any(
            getattr(chip, f) is not None
            for f in ("memory_gib", "memory_bw_gbs", "interconnect_bw_gbs", "tdp_w")
        )
        # A row whose source cell says "none found" keeps no sources, and so no numbers.
        assert chip.sources or not has_numbers, chip.name
        assert all(s.strip() for s in chip.sources)


@needs_shared
def test_chip_numbers_come_from_the_csv(catalog: Catalog) -> None:
    """Every number is the CSV's, or the kept supplement's for a cell the CSV leaves empty."""
    supplement = json.loads((DATA / "chip_supplement.json").read_text(encoding="utf-8"))
    for row in _rows("chips.csv"):
        chip = catalog.find_chip(row["model"])
        extra = supplement["chips"].get(row["model"], {}).get("fields", {})
        estimated = {c.strip() for c in row["estimated_fields"].split(";") if c.strip()}
        expected_provenance: dict[str, str] = {}
        for column, field in NUMERIC_CHIP_COLUMNS.items():
            cell = row[column].strip()
            if field in extra:
                assert not cell, (chip.name, field, "a supplement never overrides the CSV")
                assert _get(chip, field) == extra[field]["value"], (chip.name, field)
                expected_provenance[field] = extra[field]["provenance"]
                assert chip.figure_confidence[field] == extra[field]["confidence"]
                continue
            assert _get(chip, field) == (float(cell) if cell else None), (chip.name, field)
            if cell:
                expected_provenance[field] = "estimated" if column in estimated else "spec"
        expected_provenance.update({c: "estimated" for c in estimated if c == "memory_type"})
        assert dict(chip.provenance) == expected_provenance, chip.name
        assert chip.display_name == row["model"]
        assert chip.notes.startswith(row["notes"].strip())


def test_every_emulatable_chip_is_sourced_with_a_confidence_per_figure(catalog: Catalog) -> None:
    emulatable = catalog.emulatable_chips()
    domestic = [c for c in emulatable if c.domestic]
    assert len(domestic) >= 16
    assert {c.vendor_family for c in domestic} == {
        "ascend", "cambricon", "hygon", "kunlunxin", "moorethreads", "iluvatar", "metax",
        "biren", "enflame",
    }  # fmt: skip
    names = {c.name for c in domestic}
    assert {"kunlun-p800", "mtt-s5000", "ascend-910c", "mlu590"} <= names
    assert any(c.vendor_family == "metax" for c in domestic)
    for chip in emulatable:
        assert chip.sources, chip.name
        assert set(chip.figure_confidence) >= set(chip.provenance), chip.name
        assert set(chip.figure_confidence.values()) <= {"high", "medium", "low"}
        for field, prov in chip.provenance.items():
            if prov == "estimated":
                assert chip.figure_confidence[field] == "low", (chip.name, field)
    for chip in catalog.chips:
        for field in chip.estimation_methods:
            assert chip.provenance[field] == "estimated", (chip.name, field)


@needs_shared
def test_model_numbers_come_from_the_csv(catalog: Catalog) -> None:
    llm_rows = {r["name"]: r for r in _rows("models.csv")}
    for name, row in llm_rows.items():
        model = catalog.model(name)
        assert model.arch is not None
        assert model.params_b == float(row["params_b"])
        active = row["active_params_b"].strip()
        assert model.arch.active_params_b == (float(active) if active else None)
        for column in LLM_INT_COLUMNS:
            cell = row[column].strip()
            value = getattr(model.arch, column)
            if cell:
                assert value == int(cell), (name, column)
            elif column == "head_dim":
                assert "arch.head_dim" in model.derived_fields
                assert value == model.arch.hidden_size // model.arch.num_attention_heads
            else:
                assert value is None, (name, column)
        # Values taken from prose must be in the notes of this row, or of the row whose
        # architecture the notes say it shares; interpretations are declared derived.
        evidence = row["notes"]
        shared = re.search(r"Same architecture/config as (\S+)", row["notes"])
        if shared:
            evidence += " " + llm_rows[shared.group(1)]["notes"]
        for field in NOTE_EXTRA_FIELDS:
            value = getattr(model.arch, field)
            if value is None or f"arch.{field}" in model.derived_fields:
                continue
            assert re.search(rf"(?<![\d.]){value}(?![\d.])", evidence), (name, field, value)

    for row in _rows("atomic_models.csv"):
        model = catalog.model(row["name"])
        assert Decimal(str(model.params_b)) * 1000 == Decimal(row["params_m"])
        compute = row["compute_g"].strip()
        if not compute:
            assert model.gflops is None
        elif "gflops" in model.derived_fields:
            assert model.gflops == float(Decimal(compute) * 2)
            assert "MAC" in row["compute_convention"]
        else:
            assert model.gflops == float(compute)
        for metric in model.reference_metrics:
            if metric.value is not None:
                assert re.search(rf"(?<![\d.]){metric.value:g}(?![\d.])", row["metric_value"])


def test_derived_and_estimated_values_are_explained(catalog: Catalog) -> None:
    for model in catalog.models:
        if model.derived_fields:
            assert "[catalog:" in model.notes, model.name
    for chip in catalog.chips:
        assert set(chip.provenance.values()) <= {"spec", "estimated"}


# --- spot checks -------------------------------------------------------------------------


def test_known_chip_values(catalog: Catalog) -> None:
    b2 = catalog.chip("ascend-910b2")
    assert b2.display_name == "Ascend 910B2"
    assert b2.vendor == "Huawei Ascend"
    assert b2.peak("fp16") == 353.9
    assert b2.peak("BF16") == 353.9
    assert b2.memory_gib == 64.0
    assert b2.memory_bw_gbs == 1600.0
    assert b2.provenance["peak_tflops.int8"] == "estimated"
    assert b2.provenance["peak_tflops.fp16"] == "spec"
    assert b2.collective_library == "HCCL"

    generic = catalog.chip("ascend-910b")
    assert generic.peak("fp16") == 320.0
    assert generic.peak("bf16") is None  # no fallback to fp16
    assert generic.emulatable

    h100 = catalog.chip("h100-80gb-sxm")
    assert (h100.peak("fp8"), h100.memory_bw_gbs, h100.domestic) == (1978.9, 3350.0, False)

    # No published FP16 peak: the supplement assumes the sibling C500's, and says how.
    c550 = catalog.chip("metax-c550")
    assert c550.peak("fp16") == 280.0 and c550.provenance["peak_tflops.fp16"] == "estimated"
    assert "C500" in c550.estimation_methods["peak_tflops.fp16"] and c550.emulatable


def test_known_model_values(catalog: Catalog) -> None:
    llama = catalog.model("Llama-3.1-8B")
    assert llama.arch is not None
    assert (llama.arch.num_layers, llama.arch.num_kv_heads, llama.arch.head_dim) == (32, 8, 128)
    assert llama.arch.kv_cache_bytes_per_token(2) == 131_072  # NOTES.md section 4 example
    assert llama.task == "text-generation"

    v3 = catalog.model("DeepSeek-V3")
    assert v3.arch is not None and v3.arch.is_moe
    assert (v3.arch.kv_lora_rank, v3.arch.qk_rope_head_dim, v3.arch.q_lora_rank) == (512, 64, 1536)
    assert v3.arch.first_k_dense_replace == 3
    assert v3.arch.kv_cache_bytes_per_token(2) == 61 * 576 * 2
    assert v3.active_params_b == 37.55
    r1 = catalog.model("DeepSeek-R1")
    assert r1.arch is not None and r1.arch.kv_lora_rank == 512

    gemma = catalog.model("Gemma-2-9B")
    assert gemma.arch is not None
    assert (gemma.arch.sliding_window, gemma.arch.sliding_window_pattern) == (4096, 2)
    mistral = catalog.model("Mistral-7B-v0.1")
    assert mistral.arch is not None
    assert (mistral.arch.sliding_window, mistral.arch.sliding_window_pattern) == (4096, None)
    distill = catalog.model("DeepSeek-R1-Distill-Qwen-7B")
    assert distill.arch is not None and distill.arch.sliding_window is None  # disabled in config

    resnet = catalog.find_model("resnet-50")
    assert (resnet.kind, resnet.task) == ("vision", "image-classification")
    assert resnet.params_b == 0.025557032
    assert resnet.gflops == 8.18
    assert resnet.reference_metric is not None
    assert (resnet.reference_metric.name, resnet.reference_metric.value) == (
        "ImageNet-1K top-1",
        76.13,
    )
    yolo = catalog.find_model("YOLOv8n")
    assert (yolo.task, yolo.gflops, yolo.derived_fields) == ("object-detection", 8.7, ())
    whisper = catalog.find_model("whisper-large-v3")
    assert (whisper.kind, whisper.gflops, whisper.params_b) == ("speech", None, 1.55)
    bert = catalog.find_model("BERT-base-uncased")
    assert (bert.kind, bert.task) == ("nlp", "fill-mask")


# --- loader API --------------------------------------------------------------------------


def test_unknown_chip_error_names_the_chip_and_close_matches(catalog: Catalog) -> None:
    with pytest.raises(UnknownChipError) as info:
        catalog.chip("ascend-910b5")
    error = info.value
    assert isinstance(error, KeyError)
    assert str(error).startswith("unknown chip 'ascend-910b5'")
    assert "'ascend-910b2'" in str(error)
    assert error.name == "ascend-910b5"
    assert "ascend-910b2" in error.suggestions

    with pytest.raises(UnknownChipError, match=r"^unknown chip 'zzz'$"):
        catalog.find_chip("zzz")


def test_unknown_model_error(catalog: Catalog) -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'Llama-3.1-9B'.*'Llama-3.1-8B'"):
        catalog.model("Llama-3.1-9B")


def test_find_chip_accepts_slug_or_display_name(catalog: Catalog) -> None:
    b2 = catalog.chip("ascend-910b2")
    assert catalog.find_chip("ASCEND-910B2") is b2
    assert catalog.find_chip("  ascend   910b2 ") is b2
    assert catalog.find_chip("Ascend 310P").name == "ascend-310p"
    assert catalog.find_chip("Ascend 310P (1 of 2 chips on Atlas 300I Duo)").name == "ascend-310p"
    assert catalog.find_chip("mtt s4000").name == "mtt-s4000"
    with pytest.raises(KeyError):
        catalog.chip("Ascend 910B2")  # exact lookup takes the slug only


def test_records_are_immutable_and_hashable(catalog: Catalog) -> None:
    chip = catalog.chip("mi300x")
    with pytest.raises(TypeError):
        chip.peak_tflops["fp16"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        chip.memory_gib = 1.0  # type: ignore[misc]
    assert len({chip, catalog.chip("mi300x")}) == 1
    assert len(set(catalog.models)) == len(catalog.models)
    with pytest.raises(ValueError, match="unknown precision"):
        chip.peak("fp64")


def test_json_round_trip(catalog: Catalog) -> None:
    chips_doc = json.loads((DATA / "chips.json").read_text(encoding="utf-8"))
    models_doc = json.loads((DATA / "models.json").read_text(encoding="utf-8"))
    for record, chip in zip(chips_doc["chips"], catalog.chips, strict=True):
        assert chip.to_dict() == record
        assert Chip.from_dict(record) == chip
    for record, model in zip(models_doc["models"], catalog.models, strict=True):
        assert model.to_dict() == record
        assert Model.from_dict(record) == model


def test_default_catalog_is_packaged_and_cached() -> None:
    first = default_catalog()
    assert first is default_catalog()
    assert [c.name for c in first.chips] == [c.name for c in Catalog.load(DATA).chips]


def test_bad_data_is_rejected(tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    chips = json.loads((tmp_path / "chips.json").read_text(encoding="utf-8"))

    chips["chips"][0]["emulatable"] = not chips["chips"][0]["emulatable"]
    (tmp_path / "chips.json").write_text(json.dumps(chips), encoding="utf-8")
    with pytest.raises(CatalogDataError, match="emulatable"):
        Catalog.load(tmp_path)

    chips["chips"][0]["emulatable"] = not chips["chips"][0]["emulatable"]
    chips["chips"][0]["memory_gib"] = "64"
    (tmp_path / "chips.json").write_text(json.dumps(chips), encoding="utf-8")
    with pytest.raises(CatalogDataError, match="'memory_gib' must be a number"):
        Catalog.load(tmp_path)

    chips["schema_version"] = 99
    (tmp_path / "chips.json").write_text(json.dumps(chips), encoding="utf-8")
    with pytest.raises(CatalogDataError, match="schema_version"):
        Catalog.load(tmp_path)


@needs_shared
def test_check_mode_flags_a_kept_vendor_file_that_names_an_unknown_chip(tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "vendors" / "ascend.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["chips"]["ascend-9999"] = data["chips"]["ascend-910b2"]
    path.write_text(json.dumps(data), encoding="utf-8")
    result = _builder("--check", "--out", tmp_path, "--kept", tmp_path)
    assert result.returncode == 2
    assert "'ascend-9999' is not a chip of the catalogue" in result.stderr


@needs_shared
def test_check_mode_flags_a_vendor_file_for_no_family(tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path, dirs_exist_ok=True)
    shutil.copy(tmp_path / "vendors" / "ascend.json", tmp_path / "vendors" / "huawei.json")
    result = _builder("--check", "--out", tmp_path, "--kept", tmp_path)
    assert result.returncode == 2
    assert "huawei.json" in result.stderr
