"""Efficiency factors: provenance of every ceiling, and agreement with the measurements."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import pytest

from pocgrid.catalog import default_catalog
from pocgrid.perf.efficiency import STATUSES, EfficiencyData, default_efficiency
from pocgrid.perf.errors import UnsupportedInput


def test_every_modelled_ceiling_has_a_status_and_a_reason() -> None:
    eff = default_efficiency()
    modelled = 0
    for chip in default_catalog().chips:
        for precision in chip.peak_tflops:
            try:
                c = eff.ceilings(chip, precision)
            except UnsupportedInput:
                continue
            modelled += 1
            for ceiling in (c.gemm, c.attention, c.memory, c.link):
                assert ceiling.status in STATUSES
                assert ceiling.reason
                assert ceiling.rate > 0
                if ceiling.spec is not None:
                    assert ceiling.rate <= ceiling.spec * 1.000001, (chip.name, precision)
    assert modelled > 40


def test_measured_chips_and_fallbacks_are_labelled_honestly() -> None:
    eff, cat = default_efficiency(), default_catalog()
    a100 = eff.ceilings(cat.chip("a100-80gb-sxm"), "fp16")
    assert a100.gemm.status == "measured" and a100.gemm.efficiency == pytest.approx(0.806)
    assert a100.memory.status == "spec-derived"
    assert eff.ceilings(cat.chip("a100-80gb-sxm"), "bf16").gemm.status == "spec-derived"
    h100 = eff.ceilings(cat.chip("h100-80gb-sxm"), "fp8")
    assert h100.gemm.status == "spec-derived"
    assert h100.gemm.efficiency == pytest.approx(
        eff.params.default_compute_efficiency * eff.params.low_precision_compute_factor
    )
    # Link per direction is half the bidirectional figure, times the link share.
    assert h100.link.spec == pytest.approx(450e9)
    bi = eff.ceilings(cat.chip("bi-v150"), "bf16")
    assert bi.gemm.status == "measured" and bi.gemm.rate == pytest.approx(196.5e12)
    assert bi.memory.status == "measured" and bi.memory.rate == pytest.approx(590e9)
    assert bi.link.status == "estimated"  # no interconnect figure: PCIe assumed
    ascend = eff.ceilings(cat.chip("ascend-910b"), "int8")
    assert ascend.gemm.status == "measured" and ascend.gemm.rate == pytest.approx(608.55e12)
    # 910B3's peak is itself an estimate in the catalogue.
    assert eff.ceilings(cat.chip("ascend-910b3"), "fp16").gemm.status == "estimated"


def test_data_file_lists_only_catalogue_chips() -> None:
    cat = default_catalog()
    names = {c.name for c in cat.chips}
    eff = default_efficiency()
    assert set(eff.listed_chips()) <= names
    for m in eff.measurements:
        assert m["applies_to"] in names


def test_measurements_copy_the_reference_csv(shared_reference: Path) -> None:
    with (shared_reference / "measured_efficiency.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    recorded = default_efficiency().measurements
    for row in rows:
        matches = [
            m
            for m in recorded
            if m["as_measured"] == row["chip"]
            and m["kind"] == row["kind"]
            and (m["precision"] or "") == row["precision"]
            and (m["value"] is None) == (row["measured"] == "")
            and (row["measured"] == "" or m["value"] == pytest.approx(float(row["measured"])))
        ]
        assert len(matches) == 1, row
        share = matches[0]["share_of_peak"]
        assert (share is None) == (row["share_of_peak"] == "")
        if share is not None:
            assert share == pytest.approx(float(row["share_of_peak"]))


def test_loader_rejects_malformed_data() -> None:
    text = resources.files("pocgrid.perf").joinpath("data").joinpath("efficiency.json")
    doc = json.loads(text.read_text(encoding="utf-8"))
    bad = json.loads(json.dumps(doc))
    del bad["global"]["layer_overhead_s"]
    with pytest.raises(ValueError, match=r"global\.layer_overhead_s"):
        EfficiencyData.from_json(json.dumps(bad))
    bad = json.loads(json.dumps(doc))
    bad["chips"]["a100-80gb-sxm"]["compute"]["fp16"]["status"] = "guessed"
    with pytest.raises(ValueError, match="status must be one of"):
        EfficiencyData.from_json(json.dumps(bad))
