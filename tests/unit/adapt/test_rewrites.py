"""Every rewrite in the registry computes what the operator it replaces computes.

Two sources of cases: small graphs built here (run original and rewritten on onnxruntime and
compare), and the ONNX package's own backend node test cases for the operator (the cases
``onnx/backend/test/data/node`` is generated from; this onnx wheel ships the generators in
``onnx.backend.test.case.node`` but not the data files), compared against their expected
outputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from pocgrid.adapt.rewrites import REWRITES
from pocgrid.adapt.supplement import supplement

ALL_STANDARD_OPS = frozenset(s.name for s in onnx.defs.get_all_schemas() if s.domain == "")


def native_without(op: str) -> frozenset[str]:
    return ALL_STANDARD_OPS - {op}


@dataclass
class Case:
    op: str
    name: str
    inputs: dict[str, np.ndarray]
    opset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    n_outputs: int = 1

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The inputs but those named ``_...``: optional inputs left out (empty name)."""
        return {n: a for n, a in self.inputs.items() if not n.startswith("_")}


def _np_type(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def build(case: Case) -> onnx.ModelProto:
    names = ["" if n.startswith("_") else n for n in case.inputs]
    outs = [f"y{i}" for i in range(case.n_outputs)]
    node = helper.make_node(case.op, names, outs, **case.attrs)
    graph = helper.make_graph(
        [node],
        case.name,
        [helper.make_tensor_value_info(n, _np_type(a), a.shape) for n, a in case.feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's CPU provider has no kernel for some dtypes
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        return [np.asarray(x) for x in ReferenceEvaluator(model).run(None, feeds)]
    return [np.asarray(x) for x in sess.run(None, feeds)]


RNG = np.random.default_rng(0)


def f32(*shape: int, scale: float = 2.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _cases() -> list[Case]:
    x = f32(2, 3, 4)
    cases = [
        Case("Gelu", "gelu", {"x": x}, 20),
        Case("Gelu", "gelu_tanh", {"x": x}, 20, {"approximate": "tanh"}),
        Case("HardSigmoid", "hardsigmoid", {"x": x}, 13, {"alpha": 0.3, "beta": 0.4}),
        Case("HardSwish", "hardswish", {"x": x * 3}, 14),
        Case("Mish", "mish", {"x": x}, 18),
        Case("Elu", "elu", {"x": x}, 13, {"alpha": 0.7}),
        Case("Selu", "selu", {"x": x}, 13),
        Case("Celu", "celu", {"x": x}, 13, {"alpha": 1.5}),
        Case("Softsign", "softsign", {"x": x}, 13),
        Case("ThresholdedRelu", "thresholdedrelu", {"x": x}, 13, {"alpha": 0.3}),
        Case("Softmax", "softmax_last", {"x": x}, 13),
        Case("Softmax", "softmax_axis1", {"x": x}, 13, {"axis": 1}),
        Case("Softmax", "softmax_opset11_coerced", {"x": x}, 11, {"axis": 1}),
        Case("LogSoftmax", "logsoftmax_last", {"x": x}, 13),
        Case("LogSoftmax", "logsoftmax_opset11", {"x": x}, 11, {"axis": 2}),
        Case(
            "LayerNormalization",
            "layernorm_bias",
            {"x": x, "s": f32(4), "b": f32(4)},
            17,
        ),
        Case(
            "LayerNormalization",
            "layernorm_axis1_stats",
            {"x": x, "s": f32(3, 4)},
            17,
            {"axis": 1, "epsilon": 1e-3},
            n_outputs=3,
        ),
        Case(
            "LayerNormalization",
            "layernorm_fp16",
            {"x": x.astype(np.float16), "s": f32(4).astype(np.float16)},
            17,
        ),
        Case("RMSNormalization", "rmsnorm", {"x": x, "s": f32(4)}, 23),
        Case("RMSNormalization", "rmsnorm_axis1", {"x": x, "s": f32(3, 4)}, 23, {"axis": 1}),
        Case(
            "InstanceNormalization",
            "instancenorm",
            {"x": f32(2, 3, 4, 5), "s": f32(3), "b": f32(3)},
            13,
        ),
        Case(
            "Attention",
            "attention_4d_gqa_causal",
            {"q": f32(2, 4, 5, 8, scale=1), "k": f32(2, 2, 5, 8, scale=1), "v": f32(2, 2, 5, 8)},
            23,
            {"is_causal": 1},
        ),
        Case(
            "Attention",
            "attention_3d_mask_softcap",
            {
                "q": f32(2, 5, 16, scale=1),
                "k": f32(2, 6, 8, scale=1),
                "v": f32(2, 6, 8),
                "m": (RNG.standard_normal((5, 6)) > -0.5),
            },
            23,
            {"q_num_heads": 4, "kv_num_heads": 2, "softcap": 2.0, "scale": 0.3},
        ),
        Case(
            "Attention",
            "attention_4d_kv_cache_causal",
            {
                "q": f32(2, 4, 3, 8, scale=1),
                "k": f32(2, 2, 3, 8, scale=1),
                "v": f32(2, 2, 3, 8),
                "_mask": np.empty(0, np.float32),
                "pk": f32(2, 2, 5, 8, scale=1),
                "pv": f32(2, 2, 5, 8),
            },
            23,
            {"is_causal": 1},
            n_outputs=3,
        ),
    ]
    angles = RNG.uniform(0, 6.3, (2, 5, 4)).astype(np.float32)
    positions = RNG.integers(0, 5, (2, 3)).astype(np.int64)
    cases += [
        Case(
            "RotaryEmbedding",
            "rotary_4d_half_split",
            {"x": f32(2, 3, 5, 8), "cos": np.cos(angles), "sin": np.sin(angles)},
            23,
        ),
        Case(
            "RotaryEmbedding",
            "rotary_3d_interleaved_partial_positions",
            {
                "x": f32(2, 3, 24),
                "cos": np.cos(angles[0]),
                "sin": np.sin(angles[0]),
                "pos": positions,
            },
            23,
            {"num_heads": 2, "interleaved": 1, "rotary_embedding_dim": 8},
        ),
    ]
    if max_ort_opset() >= 24:
        cases.append(Case("Swish", "swish", {"x": x}, 24, {"alpha": 0.5}))
    return cases


@cache
def max_ort_opset() -> int:
    """Highest default-domain opset this onnxruntime loads a model at."""
    for opset in range(onnx.defs.onnx_opset_version(), 12, -1):
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # too new for this onnxruntime: try the next
            continue
        return opset
    return 13


CASES = _cases()


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(
        got.astype(np.float64),
        want.astype(np.float64),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
        err_msg=what,
    )


def tolerance(dtype: np.dtype[Any]) -> tuple[float, float]:
    return (2e-2, 2e-2) if dtype.itemsize <= 2 else (1e-5, 1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rewrite_preserves_outputs_on_onnxruntime(case: Case) -> None:
    model = build(case)
    onnx.checker.check_model(model, full_check=True)
    result = supplement(model, native_without(case.op))
    assert result.rewritten == {case.op: 1}, result.host
    assert not result.host
    assert case.op not in {n.op_type for n in result.model.graph.node}
    onnx.checker.check_model(result.model, full_check=True)
    want = run(model, case.feeds)
    got = run(result.model, case.feeds)
    assert len(got) == len(want) == case.n_outputs
    rtol, atol = tolerance(next(iter(case.inputs.values())).dtype)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(g, w, rtol, atol, f"{case.name} output {i}")


def test_every_rewrite_has_a_case() -> None:
    covered = {c.op for c in CASES}
    missing = set(REWRITES) - covered
    if max_ort_opset() < 24:
        missing.discard("Swish")  # the original cannot run on this onnxruntime
    assert not missing


@cache
def backend_cases() -> dict[str, list[Any]]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    by_op: dict[str, list[Any]] = {}
    for c in cases:
        nodes = c.model.graph.node
        # The single-node cases; their "_expanded" twins are the ONNX function bodies.
        if len(nodes) == 1 and nodes[0].op_type in REWRITES:
            by_op.setdefault(nodes[0].op_type, []).append(c)
    return by_op


BACKEND_OPS = sorted(set(REWRITES) & set(backend_cases()))


@pytest.mark.parametrize("op", BACKEND_OPS)
def test_rewrite_matches_onnx_backend_node_tests(op: str) -> None:
    rewritten = 0
    for case in backend_cases()[op]:
        result = supplement(case.model, native_without(op))
        if not result.rewritten:
            # Declined (a KV cache, a qk output, a newer opset's attribute): it must say why
            # and run on the host instead, never compute something else.
            assert result.host and result.host[0].reason, case.name
            continue
        rewritten += 1
        onnx.checker.check_model(result.model, full_check=True)
        names = [i.name for i in case.model.graph.input]
        for inputs, outputs in case.data_sets:
            feeds = {n: np.asarray(a) for n, a in zip(names, inputs, strict=False) if n}
            got = run(result.model, feeds)
            for i, (g, w) in enumerate(zip(got, outputs, strict=False)):
                w = np.asarray(w)
                rtol, atol = tolerance(w.dtype)
                assert_close(g, w, max(rtol, case.rtol), max(atol, case.atol), f"{case.name}[{i}]")
    assert rewritten, f"no backend case of {op} is handled by its rewrite"


def test_backend_tests_cover_most_of_the_registry() -> None:
    # Guards against the collector silently returning nothing.
    assert len(BACKEND_OPS) >= 12


def test_rewrite_needing_a_missing_primitive_falls_back_to_the_host() -> None:
    case = next(c for c in CASES if c.name == "gelu")
    result = supplement(build(case), native_without("Gelu") - {"Erf"})
    assert not result.rewritten
    (host,) = result.host
    assert host.op_type == "Gelu"
    assert "Erf" in host.reason
    assert host.transfer_bytes == 2 * 2 * 3 * 4 * 4  # input and output, float32


def test_rewrite_of_a_rewrite_when_a_primitive_is_itself_supplemented() -> None:
    # HardSwish -> ... no nested op; Mish uses Softplus: drop Softplus, which has no rewrite.
    case = next(c for c in CASES if c.name == "mish")
    result = supplement(build(case), native_without("Mish") - {"Softplus"})
    assert result.host_ops == {"Mish": 1}
    assert "Softplus" in result.host[0].reason


def test_nested_graph_nodes_are_supplemented() -> None:
    x = f32(2, 3)
    then_graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "cond",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    result = supplement(model, ALL_STANDARD_OPS - {"Gelu", "Softmax"})
    assert result.rewritten == {"Gelu": 1, "Softmax": 1}
    for flag in (True, False):
        feeds = {"c": np.array(flag), "x": x}
        assert_close(run(result.model, feeds)[0], run(model, feeds)[0], 1e-5, 1e-5, str(flag))
