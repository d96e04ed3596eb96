"""Operator coverage: native, supplemented (rewrite or host) and unsupported, per operator."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from pocgrid.adapt.coverage import graph_coverage, signature_coverage
from pocgrid.adapt.signatures import operator_signature
from pocgrid.catalog import default_catalog

STANDARD = frozenset(s.name for s in onnx.defs.get_all_schemas() if s.domain == "")


def _model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("vendor.custom", 1)],
    )
    model.ir_version = 10
    return model


def test_graph_coverage_per_operator() -> None:
    model = _model(
        [
            helper.make_node("Gelu", ["x"], ["a"]),
            helper.make_node("Einsum", ["a"], ["b"], equation="ij->ij"),
            helper.make_node("Relu", ["b"], ["y"]),
        ]
    )
    native = STANDARD - {"Gelu", "Einsum"}
    cov, result = graph_coverage("m", "chip", model, native, {"Gelu": "vendor lacks it"})
    by_op = {o.op: o for o in cov.ops}
    assert by_op["Relu"].status == "native"
    assert (by_op["Gelu"].status, by_op["Gelu"].method) == ("supplemented", "rewrite")
    assert by_op["Gelu"].gap == "vendor lacks it"
    assert (by_op["Einsum"].status, by_op["Einsum"].method) == ("supplemented", "host")
    assert cov.verdict == "supplemented"
    assert result.rewritten == {"Gelu": 1}
    assert result.host_ops == {"Einsum": 1}
    assert result.host_transfer_bytes == 2 * 2 * 8 * 4


def test_custom_domain_operator_is_unsupported() -> None:
    model = _model(
        [
            helper.make_node("FancyOp", ["x"], ["a"], domain="vendor.custom"),
            helper.make_node("Relu", ["a"], ["y"]),
        ]
    )
    cov, _ = graph_coverage("m", "chip", model, STANDARD, {})
    assert cov.verdict == "unsupported"
    (bad,) = cov.by_status("unsupported")
    assert bad.op == "FancyOp" and "vendor.custom" in bad.detail


def test_all_native_graph() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    cov, result = graph_coverage("m", "chip", model, STANDARD, {})
    assert cov.verdict == "native" and not result.rewritten and not result.host


def test_llm_signature_needs_fused_ops_supplemented_where_missing() -> None:
    cat = default_catalog()
    ops = operator_signature(cat.find_model("Llama-3.1-8B"))
    assert ops is not None
    assert {"Attention", "RotaryEmbedding", "RMSNormalization", "MatMul"} <= set(ops)
    lacking = {"Attention", "RotaryEmbedding", "RMSNormalization"}
    cov = signature_coverage("Llama-3.1-8B", "x", ops, STANDARD - lacking, {})
    assert {o.op for o in cov.by_status("supplemented")} == lacking
    assert all(o.method == "rewrite" for o in cov.by_status("supplemented"))
    assert signature_coverage("Llama-3.1-8B", "y", ops, STANDARD, {}).verdict == "native"


def test_signature_op_without_rewrite_goes_to_host() -> None:
    cov = signature_coverage(
        "m", "c", {"NonMaxSuppression": 1, "Conv": 3}, STANDARD - {"NonMaxSuppression"}, {}
    )
    (nms,) = cov.by_status("supplemented")
    assert nms.method == "host"


def test_every_catalogue_model_has_a_signature() -> None:
    for model in default_catalog().models:
        assert operator_signature(model), model.name
