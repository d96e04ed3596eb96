"""Precision rules and native-operator sets per vendor family and chip."""

from __future__ import annotations

import pytest

from pocgrid.catalog import Catalog, default_catalog
from services.agent.runtime import VendorRuntime, create_runtime


def runtime(catalog: Catalog, slug: str) -> VendorRuntime:
    return create_runtime(catalog.chip(slug), 1)


@pytest.mark.parametrize(
    ("slug", "expected"),
    [
        # 310P: FP16 only for compute (vllm-ascend), INT8 from its rating; no BF16/FP32.
        ("ascend-310p", ("fp16", "int8")),
        ("ascend-910b2", ("fp32", "fp16", "bf16", "int8")),
        # K100 has no BF16/TF32 peak; the K100-AI variant does.
        ("dcu-k100", ("fp32", "fp16", "int8")),
        ("dcu-k100-ai", ("fp32", "tf32", "fp16", "bf16", "int8")),
        # Biren announced TF32+/BF16 but no FP16.
        ("br100", ("fp32", "tf32", "bf16", "int8")),
        # Enflame S60: FP16/BF16/INT8, documented as no FP8.
        ("enflame-s60", ("fp32", "fp16", "bf16", "int8")),
        # FP8 only where the catalogue has an FP8 peak (Hopper), not on Ampere.
        ("a100-80gb-sxm", ("fp32", "tf32", "fp16", "bf16", "int8")),
        ("h100-80gb-sxm", ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")),
        ("mi300x", ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")),
    ],
)
def test_precision_rules(catalog: Catalog, slug: str, expected: tuple[str, ...]) -> None:
    rt = runtime(catalog, slug)
    assert rt.precisions == expected
    assert rt.devices[0].precisions == expected


def test_precision_names_and_aliases(catalog: Catalog) -> None:
    rt = runtime(catalog, "ascend-310p")
    assert rt.supports_precision("fp16")
    assert rt.supports_precision("float16")
    assert rt.supports_precision("FP16")
    assert not rt.supports_precision("bf16")
    assert not rt.supports_precision("bfloat16")
    assert not rt.supports_precision("fp32")
    assert not rt.supports_precision("int4")


def test_reference_runtime_runs_the_whole_base_set(catalog: Catalog) -> None:
    rt = runtime(catalog, "h100-80gb-sxm")
    base = default_catalog().operators.base
    assert rt.native_operators == base
    assert rt.unsupported_operators(sorted(base)) == []


def test_unsupported_operators_are_listed_once_in_first_seen_order(catalog: Catalog) -> None:
    rt = runtime(catalog, "ascend-910b2")
    model_ops = ["Conv", "NonZero", "Relu", "NonMaxSuppression", "NonZero", "MatMul", "MyCustomOp"]
    assert rt.unsupported_operators(model_ops) == ["NonZero", "NonMaxSuppression", "MyCustomOp"]
    assert rt.unsupported_operators(iter(["Add", "Softmax"])) == []


def test_chip_specific_gaps_add_to_the_family_gaps(catalog: Catalog) -> None:
    b2 = runtime(catalog, "ascend-910b2")
    p310 = runtime(catalog, "ascend-310p")
    assert b2.supports_operator("Attention")
    assert not p310.supports_operator("Attention")
    assert not p310.supports_operator("NonZero")  # the family gap still applies
    assert p310.native_operators < b2.native_operators


def test_operator_sets_differ_between_families(catalog: Catalog) -> None:
    slugs = ["ascend-910b2", "mlu370-x8", "kunlun-r200", "mtt-s4000", "br104", "enflame-s60"]
    native = {slug: runtime(catalog, slug).native_operators for slug in slugs}
    assert len(set(native.values())) == len(slugs), "each of these families has its own gaps"
    assert runtime(catalog, "mlu370-x8").supports_operator("Attention")
    assert not runtime(catalog, "mlu370-x8").supports_operator("GridSample")
    assert runtime(catalog, "mtt-s4000").supports_operator("NonZero")
    assert not runtime(catalog, "mtt-s4000").supports_operator("RoiAlign")


def test_operator_support_explains_a_gap(catalog: Catalog) -> None:
    rt = runtime(catalog, "enflame-s60")
    support = rt.operator_support("LSTM")
    assert not support.native
    assert support.gap is not None
    assert support.gap.basis == "estimate"
    assert "recurrent" in support.gap.reason
    assert rt.operator_support("Conv").native
    outside = rt.operator_support("com.example.FancyOp")
    assert not outside.native
    assert outside.gap is not None and "base operator set" in outside.gap.reason


def test_operator_names_are_case_sensitive_onnx_names(catalog: Catalog) -> None:
    rt = runtime(catalog, "a100-80gb-sxm")
    assert rt.supports_operator("MatMul")
    assert not rt.supports_operator("matmul")
