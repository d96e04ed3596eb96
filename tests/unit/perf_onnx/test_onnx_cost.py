"""ONNX graph costs: FLOPs from shapes, elementwise fusion, roofline time per chip."""

from __future__ import annotations

import pytest

from pocgrid.catalog import PRECISION_BYTES, default_catalog
from pocgrid.perf.onnx_cost import KERNEL_LAUNCH_S, graph_cost
from pocgrid.perf.roofline import Bound
from pocgrid.samples import cnn, mlp


def test_mlp_flops_and_fusion():
    chip = default_catalog().chip("ascend-910b2")
    cost = graph_cost(mlp(64, 128, 10), {"x": [32, 64]}, chip, "fp16")
    gemm = 2 * 32 * (64 * 128 + 128 * 10)
    elementwise = 32 * 128 * 2 + 32 * 10  # Add+Relu on hidden, Add on logits
    softmax = 32 * 10 * 5
    assert cost.flops == pytest.approx(gemm + elementwise + softmax)
    # Add and Relu fuse into the first MatMul, the second Add into the second MatMul.
    assert cost.fused_ops == 3
    assert [k.ops for k in cost.kernels] == [
        ("MatMul", "Add", "Relu"),
        ("MatMul", "Add"),
        ("Softmax",),
    ]
    # Fused intermediates never reach memory: fewer bytes than unfused reads+writes.
    weights = (64 * 128 + 128 + 128 * 10 + 10) * PRECISION_BYTES["fp16"]
    assert cost.weight_bytes == pytest.approx(weights)
    assert cost.seconds > 0


def test_conv_flops_and_chip_speed():
    catalog = default_catalog()
    model = cnn(channels=8, classes=10)
    slow = graph_cost(model, {"img": [16, 3, 32, 32]}, catalog.chip("kunlun-r200"), "fp16")
    fast = graph_cost(model, {"img": [16, 3, 32, 32]}, catalog.chip("h100-80gb-sxm"), "fp16")
    conv = 2 * 16 * 8 * 32 * 32 * 27
    assert slow.flops >= conv
    assert fast.flops == slow.flops
    assert fast.seconds < slow.seconds


def test_batch_scales_work_and_small_graphs_are_launch_bound():
    chip = default_catalog().chip("mlu370-x8")
    small = graph_cost(mlp(), {"x": [1, 64]}, chip, "fp16")
    big = graph_cost(mlp(4096, 4096, 1000), {"x": [4096, 4096]}, chip, "fp16")
    assert len(small.kernels) * KERNEL_LAUNCH_S > 0.5 * small.seconds
    assert big.bound == Bound.COMPUTE
    assert big.flops > 1000 * small.flops
