"""The planner: precision, parallelism, concurrency, chunk, passes, Pareto, the matrix."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest

from pocgrid.adapt.adapt import CELL_KEYS, adapt, chip_coverage, matrix
from pocgrid.adapt.cli import parse_slo
from pocgrid.adapt.coverage import signature_coverage
from pocgrid.adapt.plan import PlanRequest, Slo, pareto_frontier, plan_llm
from pocgrid.adapt.signatures import operator_signature
from pocgrid.catalog import default_catalog
from pocgrid.cli.main import main
from pocgrid.perf.errors import PerfInputError

CAT = default_catalog()
STANDARD = frozenset(s.name for s in onnx.defs.get_all_schemas() if s.domain == "")


def test_llama2_70b_on_8_h100_fp8_chooses_parallelism_and_batch() -> None:
    a = adapt(
        CAT,
        CAT.find_model("Llama-2-70B"),
        CAT.find_chip("h100-80gb-sxm"),
        PlanRequest(devices=8, precision="fp8"),
    )
    assert a.plan is not None and a.plan.best is not None
    best = a.plan.best
    assert (best.precision, best.devices) == ("fp8", 8)
    assert best.tp * best.replicas == 8 and best.tp in (1, 2, 4, 8)
    assert best.max_num_seqs > 1 and best.output_tokens_per_s > 0
    assert any("tp " in line for line in a.explanation)
    cell = a.cell()
    assert cell["tp"] == best.tp and cell["output_tokens_per_s"] == best.output_tokens_per_s


def test_lacking_an_operator_gives_a_supplemented_plan_slower_than_having_it() -> None:
    model = CAT.find_model("Llama-3.1-8B")
    chip = CAT.find_chip("h100-80gb-sxm")
    ops = operator_signature(model)
    assert ops is not None
    req = PlanRequest(slo=Slo(ttft_ms=3000, tpot_ms=80))
    runtime = CAT.precisions(chip)
    full = plan_llm(model, chip, req, signature_coverage("m", "c", ops, STANDARD, {}), runtime)
    lacking = signature_coverage("m", "c", ops, STANDARD - {"Attention"}, {})
    supp = plan_llm(model, chip, req, lacking, runtime)
    assert full.verdict == "runs_natively"
    assert supp.verdict == "runs_with_supplementation" and "Attention" in supp.reason
    assert full.best is not None and supp.best is not None
    assert supp.best.output_tokens_per_s < full.best.output_tokens_per_s


def test_catalogue_chip_lacking_fused_ops_is_supplemented() -> None:
    # MI300X's runtime lacks the opset-23 fused ops in the catalogue; H100 has them.
    model = CAT.find_model("Qwen2.5-7B")
    mi = adapt(CAT, model, CAT.find_chip("mi300x"), PlanRequest())
    assert mi.verdict == "runs_with_supplementation"
    assert "supplement:Attention:rewrite" in mi.cell()["passes"]  # type: ignore[operator]


@pytest.mark.parametrize("chip", ["kunlun-r200", "ascend-910"])
def test_chip_without_bf16_gets_fp16_with_the_reason(chip: str) -> None:
    model = CAT.find_model("Qwen2.5-7B")
    for req in (PlanRequest(), PlanRequest(precision="bf16")):
        a = adapt(CAT, model, CAT.find_chip(chip), req)
        assert a.plan is not None and a.plan.best is not None
        assert a.plan.best.precision == "fp16"
        assert any("no bf16" in line for line in a.explanation), a.explanation


def test_slo_is_met_or_the_plan_says_why_not() -> None:
    model, chip = CAT.find_model("Llama-3.1-8B"), CAT.find_chip("a100-80gb-sxm")
    loose = adapt(CAT, model, chip, PlanRequest(devices=2)).plan
    tight = adapt(CAT, model, chip, PlanRequest(devices=2, slo=Slo(tpot_ms=15.0))).plan
    assert loose is not None and tight is not None and loose.best is not None
    if tight.best is not None:
        assert tight.best.tpot_p99_ms <= 15.0
        assert tight.best.output_tokens_per_s <= loose.best.output_tokens_per_s
    else:
        assert "TPOT" in tight.reason
    impossible = adapt(CAT, model, chip, PlanRequest(slo=Slo(tpot_ms=0.01))).plan
    assert impossible is not None and impossible.best is None and "SLO" in impossible.reason


def test_pareto_frontier_is_non_dominated() -> None:
    plan = adapt(
        CAT, CAT.find_model("Llama-3.1-8B"), CAT.find_chip("h100-80gb-sxm"), PlanRequest(devices=4)
    ).plan
    assert plan is not None and len(plan.pareto) >= 3
    for a in plan.pareto:
        for b in plan.pareto:
            assert not (
                b.output_tokens_per_s_per_device > a.output_tokens_per_s_per_device
                and b.tokens_per_s_per_user > a.tokens_per_s_per_user
            )
    assert pareto_frontier(plan.pareto) == list(plan.pareto)


def test_passes_speculative_decoding_prefix_caching_and_kv_quantization() -> None:
    model, chip = CAT.find_model("Llama-3.1-8B"), CAT.find_chip("h100-80gb-sxm")
    plan = adapt(
        CAT,
        model,
        chip,
        PlanRequest(allow_quantized=True, spec_acceptance=2.5, prefix_hit_rate=0.5),
    ).plan
    assert plan is not None and plan.best is not None
    passes = {p.name: p for p in plan.passes}
    assert passes["speculative_decoding"].applied and passes["speculative_decoding"].gain
    assert passes["prefix_caching"].applied
    assert "speculative_decoding" in plan.best.passes
    off = adapt(CAT, model, chip, PlanRequest()).plan
    assert off is not None and off.best is not None
    by_name = {p.name: p for p in off.passes}
    # H100's runtime has the fused kernels: fusion is what it runs; the rest are not applied
    # without the request's say, yet each still reports its modelled gain and assumption.
    fusion = by_name["operator_fusion"]
    assert fusion.applied and fusion.gain is not None and fusion.gain > 1.0
    for name in ("kv_cache_fp8", "speculative_decoding", "prefix_caching"):
        p = by_name[name]
        assert not p.applied and p.reason and p.gain is not None and p.gain > 1.0, p
    assert by_name["speculative_decoding"].assumption.startswith("a draft model")
    assert "Leviathan" in by_name["speculative_decoding"].assumption
    assert "hit rate 0.5" in by_name["prefix_caching"].assumption
    assert not by_name["speculative_decoding_mtp"].applied
    assert "no multi-token-prediction" in by_name["speculative_decoding_mtp"].reason
    assert off.best.passes == ("operator_fusion",)


def test_mtp_module_drafts_where_the_checkpoint_has_one() -> None:
    model, chip = CAT.find_model("DeepSeek-V3"), CAT.find_chip("h200-141gb-sxm")
    plan = adapt(CAT, model, chip, PlanRequest(devices=16)).plan
    assert plan is not None and plan.best is not None
    mtp = {p.name: p for p in plan.passes}["speculative_decoding_mtp"]
    assert mtp.applied and mtp.gain is not None and mtp.gain > 1.02
    assert "speculative_decoding_mtp" in plan.best.passes
    assert "DeepSeek-V3 report" in mtp.assumption


def test_every_pass_has_a_modelled_gain_on_every_chip() -> None:
    names = {
        "operator_fusion",
        "speculative_decoding_mtp",
        "speculative_decoding",
        "prefix_caching",
    }
    for a in matrix(CAT):
        if a.plan is None or a.plan.best is None:
            continue
        passes = {p.name: p for p in a.plan.passes}
        assert names <= set(passes), (a.model, a.chip)
        (kv,) = [n for n in passes if n.startswith("kv_cache_")]
        for name in ("speculative_decoding", "prefix_caching", kv):
            p = passes[name]
            if name == "kv_cache_quantized":  # the chip has neither fp8 nor int8
                assert p.gain is None and "fp8 or int8" in p.reason
                continue
            assert p.gain is not None and p.gain > 0, (a.model, a.chip, p)
        fusion = passes["operator_fusion"]
        assert fusion.gain is not None and fusion.gain >= 1.0, (a.model, a.chip, fusion)
        cell = a.cell()
        gains = cell["pass_gains"]
        assert isinstance(gains, dict) and set(gains) == set(passes)
        for name in cell["passes"]:  # type: ignore[attr-defined]
            assert name.startswith("supplement:") or passes[name].applied, (cell, name)


def test_does_not_fit_and_needs_devices() -> None:
    big, chip = CAT.find_model("Llama-3.1-405B"), CAT.find_chip("rtx-4090")
    # One node's tensor parallelism cannot hold 405B: pipeline stages of 8 across 8 nodes.
    staged = adapt(CAT, big, chip, PlanRequest())
    assert staged.verdict == "needs_devices" and "pp 8 x tp 8" in staged.reason
    assert staged.cell()["devices"] == 64 and staged.cell()["pp"] == 8
    budget = adapt(CAT, big, chip, PlanRequest(devices=8))
    assert budget.verdict == "needs_devices" and "needs 64" in budget.reason
    small = dataclasses.replace(CAT.find_chip("h100-80gb-sxm"), memory_gib=4.0)
    huge = CAT.find_model("DeepSeek-V3")
    none = plan_llm(huge, small, PlanRequest(), None, CAT.precisions(small))
    assert none.verdict == "does_not_fit" and "64 x" in none.reason
    a = adapt(CAT, CAT.find_model("Llama-2-70B"), CAT.find_chip("a100-80gb-sxm"), PlanRequest())
    assert a.verdict == "needs_devices" and a.cell()["devices"] == 2
    short = adapt(
        CAT, CAT.find_model("Llama-2-70B"), CAT.find_chip("a100-80gb-sxm"), PlanRequest(devices=1)
    )
    assert short.verdict == "needs_devices" and "needs 2" in short.reason
    assert short.cell()["output_tokens_per_s"] is None


def test_coverage_comes_from_the_catalogue_operator_sets() -> None:
    model = CAT.find_model("YOLOv5s")
    cov = chip_coverage(CAT, model, CAT.find_chip("ascend-910b"))
    assert cov is not None
    (nms,) = cov.by_status("supplemented")
    assert nms.op == "NonMaxSuppression" and nms.method == "host" and nms.gap
    h100 = chip_coverage(CAT, model, CAT.find_chip("h100-80gb-sxm"))
    assert h100 is not None and h100.verdict == "native"


def test_matrix_every_model_on_every_emulatable_chip() -> None:
    # How long the whole matrix takes is bench.adapt_matrix's figure, not a test's.
    cells = [a.cell() for a in matrix(CAT)]
    chips = {c["chip"] for c in cells}
    models = {c["model"] for c in cells}
    assert len(chips) >= 16 and len(models) >= 24
    assert len(cells) == len(chips) * len(models)
    for c in cells:
        assert set(CELL_KEYS) <= set(c)
        runs = c["verdict"] in ("runs_natively", "runs_with_supplementation", "needs_devices")
        if c["kind"] == "llm":
            assert (c["output_tokens_per_s"] is not None) == runs, c
        if not runs:
            assert c["reason"], c


def test_request_validation_names_the_field() -> None:
    with pytest.raises(PerfInputError, match="devices"):
        PlanRequest(devices=0)
    with pytest.raises(PerfInputError, match="slo"):
        parse_slo("ttft=abc")
    with pytest.raises(PerfInputError, match="slo"):
        parse_slo("speed=3")
    assert parse_slo("ttft=2000,tpot_ms=50") == Slo(ttft_ms=2000, tpot_ms=50)


def test_cli_adapt_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["adapt", "--model", "Llama-2-70B", "--chip", "h100-80gb-sxm", "--devices", "8"]
    assert main([*argv, "--precision", "fp8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "fp8" and out["devices"] == 8
    assert out["tp"] * out["replicas"] == 8 and out["output_tokens_per_s"] > 0
    assert out["plan"]["pareto"] and out["plan"]["explanation"]
    assert out["plan"]["simulated"]["output_tokens_per_s"] > 0
    assert main(["adapt", "--model", "nope", "--chip", "h100-80gb-sxm"]) == 2


def test_cli_matrix_json_and_html(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    page = tmp_path / "matrix.html"
    assert main(["adapt", "matrix", "--json", "--html", str(page)]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert len(cells) >= 16 * 24
    text = page.read_text(encoding="utf-8")
    assert text.count('class="cell"') == len(cells)
    assert "http://" not in text and "https://" not in text  # self-contained


def test_onnx_plan_measures_fusion_and_int8_accuracy_delta() -> None:
    from pocgrid.adapt.adapt import adapt_onnx
    from pocgrid.samples import cnn

    chip = CAT.find_chip("ascend-910b")
    for req in (PlanRequest(), PlanRequest(allow_quantized=True)):
        a = adapt_onnx(CAT, "cnn", cnn(), chip, req)
        assert a.dense is not None
        passes = {p.name: p for p in a.passes}
        fusion, int8 = passes["operator_fusion"], passes["int8_ptq"]
        assert fusion.measured and fusion.gain is not None and fusion.gain > 0
        assert int8.measured and int8.accuracy_delta is not None and int8.accuracy_delta >= 0
        assert "arg-max agreement" in int8.reason
        assert a.to_dict()["passes_considered"]
        if not req.allow_quantized:
            assert not int8.applied and "--allow-quantized" in int8.reason


def test_single_plan_is_replayed_in_the_serving_simulator() -> None:
    model, chip = CAT.find_model("Llama-3.1-8B"), CAT.find_chip("mi300x")
    req = PlanRequest(slo=Slo(ttft_ms=2000, tpot_ms=50))
    a = adapt(CAT, model, chip, req, simulate=True)
    assert a.plan is not None and a.plan.best is not None
    sim = a.plan.simulated
    assert sim is not None and sim.requests >= 200 and sim.output_tokens_per_s > 0
    assert sim.ttft_p99_ms > 0 and sim.tpot_p99_ms > 0
    # Below saturation the simulated rate is in the planned one's neighbourhood.
    assert 0.5 < sim.output_tokens_per_s / (0.85 * a.plan.best.output_tokens_per_s) < 1.5
    assert any("serving simulator" in line for line in a.explanation)
    assert adapt(CAT, model, chip, req).plan.simulated is None
