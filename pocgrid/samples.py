"""Small ONNX models built in code (no downloads, no weights files): an MLP classifier, a CNN and
an Einsum graph. Used by the demo and the tests to run real numerics on emulated chips."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp(d_in: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    b2 = rng.standard_normal(classes).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )


def cnn(channels: int = 8, classes: int = 10, seed: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((channels, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    fc = (rng.standard_normal((classes, channels)) / np.sqrt(channels)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["img", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["out"], transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")],
    )


def einsum() -> onnx.ModelProto:
    nodes = [helper.make_node("Einsum", ["a", "b"], ["y"], equation="ij,jk->ik")]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [],
    )
