"""What the rewrites need to know about a graph: element types and ranks of its values.

Shape inference is run once per model; subgraph values (If/Loop bodies) are included, since
ONNX value names are unique across a model's nested graphs in practice and the rewrites only
ask about the inputs of the node they replace.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx


@dataclass(frozen=True, slots=True)
class ValueType:
    elem_type: int
    """onnx.TensorProto data type; 0 when unknown."""
    shape: tuple[int | None, ...] | None
    """Static dims (None for a symbolic one); None when even the rank is unknown."""

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def _value_type(vi: onnx.ValueInfoProto) -> ValueType | None:
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    shape: tuple[int | None, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return ValueType(tt.elem_type, shape)


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in its nodes' attributes, outermost first."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def value_types(model: onnx.ModelProto) -> dict[str, ValueType]:
    """Element type and shape of every value shape inference can tell, by name."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an op inference rejects leaves us with the declared types
        inferred = model
    types: dict[str, ValueType] = {}
    for g in graphs(inferred.graph):
        for vi in (*g.input, *g.value_info, *g.output):
            t = _value_type(vi)
            if t is not None:
                types[vi.name] = t
        for init in g.initializer:
            types[init.name] = ValueType(init.data_type, tuple(init.dims))
    return types


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (1 when it imports none explicitly)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def tensor_bytes(t: ValueType | None) -> int | None:
    """Bytes of a value with a fully static shape; None otherwise."""
    if t is None or t.shape is None or any(d is None for d in t.shape) or not t.elem_type:
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    except Exception:  # string and exotic types have no fixed size
        return None
    n = 1
    for d in t.shape:
        assert d is not None
        n *= d
    return int(n * itemsize)
