"""FLOPs, bytes and roofline time of an ONNX graph on a chip.

Shapes come from ONNX shape inference with the request's concrete input shapes. Each node gets
FLOPs (MatMul/Gemm/Conv from their dimensions, elementwise and normalisation ops per output
element) and bytes (its inputs and outputs at the chip's precision). Chains of elementwise ops
that feed only each other are fused into their producer, as vendor graph compilers do (CANN's
graph engine, Neuware's CNNL fusion, TensorRT-style backends), so their intermediate tensors
never touch device memory. Each fused group is one kernel: its time is the roofline term that
dominates (combined with the others as in the LLM model, see roofline.py), plus a per-kernel
launch overhead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
from onnx import shape_inference

from pocgrid.catalog import PRECISION_BYTES, Chip
from pocgrid.perf.efficiency import ChipCeilings, default_efficiency
from pocgrid.perf.roofline import Bound, op_time

#: Per-kernel launch cost on a device (host-side enqueue and device scheduling). An estimate:
#: public launch latencies for CUDA-class runtimes are 3-10 us; no domestic figure was found.
KERNEL_LAUNCH_S = 5e-6


#: FLOPs per output element for elementwise-like ops (transcendentals cost several).
_ELEMENTWISE_FLOPS = {
    "Add": 1,
    "Sub": 1,
    "Mul": 1,
    "Div": 1,
    "Relu": 1,
    "LeakyRelu": 2,
    "Clip": 2,
    "Max": 1,
    "Min": 1,
    "Neg": 1,
    "Abs": 1,
    "Sqrt": 4,
    "Reciprocal": 4,
    "Pow": 8,
    "Exp": 8,
    "Log": 8,
    "Sigmoid": 10,
    "Tanh": 10,
    "Erf": 10,
    "Gelu": 12,
    "HardSigmoid": 3,
    "HardSwish": 4,
    "Mish": 16,
    "Softplus": 10,
    "Where": 1,
    "Cast": 1,
    "Equal": 1,
    "Greater": 1,
    "Less": 1,
    "Not": 1,
    "And": 1,
    "Or": 1,
    "PRelu": 2,
    "Selu": 4,
    "Elu": 8,
    "Floor": 1,
    "Ceil": 1,
}
#: Ops that read and write a tensor without a shape-independent FLOP cost worth modelling.
_NORMALISATION_FLOPS = {
    "Softmax": 5,
    "LogSoftmax": 6,
    "LayerNormalization": 8,
    "BatchNormalization": 4,
    "InstanceNormalization": 8,
    "GroupNormalization": 8,
    "ReduceMean": 1,
    "ReduceSum": 1,
    "ReduceMax": 1,
    "ReduceL2": 2,
    "LpNormalization": 3,
}
#: Pure metadata: no data is moved (views), so no kernel is launched.
_VIEW_OPS = {
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Constant",
    "ConstantOfShape",
    "Size",
    "Dropout",
}


@dataclass(frozen=True, slots=True)
class NodeCost:
    name: str
    op_type: str
    flops: float
    bytes_moved: float
    out_bytes: float


@dataclass(frozen=True, slots=True)
class KernelCost:
    """One launched kernel: a compute/data op with the elementwise ops fused into it."""

    ops: tuple[str, ...]
    flops: float
    bytes_moved: float
    seconds: float
    bound: Bound


@dataclass(frozen=True, slots=True)
class GraphCost:
    chip: str
    precision: str
    kernels: tuple[KernelCost, ...]
    fused_ops: int
    """Elementwise ops folded into a neighbouring kernel."""
    flops: float
    bytes_moved: float
    seconds: float
    weight_bytes: float
    activation_peak_bytes: float
    """Largest single activation tensor (a lower bound on live activation memory)."""

    @property
    def bound(self) -> Bound:
        by: dict[Bound, float] = {}
        for k in self.kernels:
            by[k.bound] = by.get(k.bound, 0.0) + k.seconds
        return max(by, key=lambda b: by[b]) if by else Bound.OVERHEAD


def _dims(value_info: onnx.ValueInfoProto) -> list[int] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for d in tensor.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return dims


def _numel(shape: Sequence[int] | None) -> int:
    return math.prod(shape) if shape else (0 if shape is None else 1)


def with_input_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]
) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the given concrete shapes, shapes inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for inp in fixed.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[inp.name]:
                dims.add().dim_value = int(size)
    return shape_inference.infer_shapes(fixed, strict_mode=False)


def node_costs(model: onnx.ModelProto, element_bytes: float) -> list[NodeCost]:
    """Per-node FLOPs and bytes; ``model`` must carry inferred concrete shapes."""
    graph = model.graph
    shapes: dict[str, list[int] | None] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shapes[vi.name] = _dims(vi)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    costs = []
    for node in graph.node:
        ins = [shapes.get(n) for n in node.input if n]
        outs = [shapes.get(n) for n in node.output if n]
        out_elems = sum(_numel(s) for s in outs)
        moved = (sum(_numel(s) for s in ins) + out_elems) * element_bytes
        flops = _flops(node, ins, outs, out_elems)
        if node.op_type in _VIEW_OPS:
            moved = 0.0
        costs.append(
            NodeCost(
                node.name or node.output[0], node.op_type, flops, moved, out_elems * element_bytes
            )
        )
    return costs


def _flops(
    node: onnx.NodeProto, ins: list[list[int] | None], outs: list[list[int] | None], out_elems: int
) -> float:
    op = node.op_type
    if op in ("MatMul", "Gemm", "MatMulInteger", "FusedMatMul") and len(ins) >= 2:
        a, b = ins[0], ins[1]
        if a is None or b is None or not a:
            return 0.0
        trans_a = any(att.name == "transA" and att.i for att in node.attribute)
        k = a[-2] if (op == "Gemm" and trans_a) else a[-1]
        return 2.0 * out_elems * k
    if op in ("Conv", "ConvTranspose", "ConvInteger") and len(ins) >= 2 and ins[1]:
        w = ins[1]
        assert w is not None
        group = next((att.i for att in node.attribute if att.name == "group"), 1)
        per_output = math.prod(w[1:]) if op != "ConvTranspose" else w[0] // group * math.prod(w[2:])
        return 2.0 * out_elems * per_output
    if op in ("MaxPool", "AveragePool"):
        kernel = next((list(att.ints) for att in node.attribute if att.name == "kernel_shape"), [1])
        return float(out_elems * math.prod(kernel))
    if op in ("GlobalAveragePool", "GlobalMaxPool") and ins and ins[0]:
        return float(_numel(ins[0]))
    if op in _ELEMENTWISE_FLOPS:
        return float(out_elems * _ELEMENTWISE_FLOPS[op])
    if op in _NORMALISATION_FLOPS:
        return float(max(out_elems, _numel(ins[0]) if ins else 0) * _NORMALISATION_FLOPS[op])
    return 0.0


def _fuse(model: onnx.ModelProto) -> tuple[list[list[int]], int]:
    """Group node indexes into kernels: elementwise ops join their single-consumer producer."""
    graph = model.graph
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    producer_group: dict[str, int] = {}
    groups: list[list[int]] = []
    fused = 0
    for i, node in enumerate(graph.node):
        if node.op_type in _VIEW_OPS:
            # Views alias their input: consumers of the view fuse as if reading the producer.
            for out in node.output:
                if node.input and node.input[0] in producer_group:
                    producer_group[out] = producer_group[node.input[0]]
            continue
        target = None
        if node.op_type in _ELEMENTWISE_FLOPS:
            for name in node.input:
                g = producer_group.get(name)
                if g is not None and consumers.get(name, 0) == 1 and name not in graph_outputs:
                    target = g
                    break
        if target is None:
            groups.append([i])
            target = len(groups) - 1
        else:
            groups[target].append(i)
            fused += 1
        for out in node.output:
            producer_group[out] = target
    return groups, fused


def graph_cost(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    chip: Chip,
    precision: str,
    ceilings: ChipCeilings | None = None,
    *,
    fuse: bool = True,
) -> GraphCost:
    """``fuse=False`` launches every node as its own kernel (what the fusion saves)."""
    element_bytes = float(PRECISION_BYTES[precision])
    efficiency = default_efficiency()
    ceilings = ceilings or efficiency.ceilings(chip, precision)
    shaped = with_input_shapes(model, input_shapes)
    costs = node_costs(shaped, element_bytes)
    if fuse:
        groups, fused = _fuse(shaped)
    else:
        groups = [[i] for i, n in enumerate(shaped.graph.node) if n.op_type not in _VIEW_OPS]
        fused = 0
    kernels = []
    for group in groups:
        flops = sum(costs[i].flops for i in group)
        moved = costs[group[0]].bytes_moved
        # A fused op reads only its extra operands (bias, scale): its main input stays on chip,
        # and only the last op of the chain writes its output to device memory.
        for i in group[1:]:
            moved += max(0.0, costs[i].bytes_moved - 2 * costs[i].out_bytes)
        if len(group) > 1:
            moved += costs[group[-1]].out_bytes - costs[group[0]].out_bytes
        t = op_time(
            flops=flops,
            bytes_moved=moved,
            comm_bytes=0.0,
            compute_flops_per_s=ceilings.gemm.rate,
            memory_bytes_per_s=ceilings.memory.rate,
            link_bytes_per_s=ceilings.link.rate,
            overhead_s=KERNEL_LAUNCH_S,
            overlap_exponent=efficiency.params.overlap_exponent,
        )
        ops = tuple(shaped.graph.node[i].op_type for i in group)
        kernels.append(KernelCost(ops, flops, moved, t.seconds, t.bound))
    weight_bytes = sum(math.prod(init.dims) for init in shaped.graph.initializer) * element_bytes
    return GraphCost(
        chip=chip.name,
        precision=precision,
        kernels=tuple(kernels),
        fused_ops=fused,
        flops=sum(k.flops for k in kernels),
        bytes_moved=sum(k.bytes_moved for k in kernels),
        seconds=sum(k.seconds for k in kernels),
        weight_bytes=weight_bytes,
        activation_peak_bytes=max((c.out_bytes for c in costs), default=0.0),
    )
