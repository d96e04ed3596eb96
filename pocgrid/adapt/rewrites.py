"""Operator supplementation: rewrites of ONNX operators into primitives a runtime has.

A vendor runtime that lacks an operator can still run a model that uses it when the operator
is decomposed into operators it does have (GELU into Erf/Mul/Add, LayerNormalization into
reductions and elementwise ops, fused opset-23 Attention into MatMul/Softmax, ...). Each
:class:`Rewrite` expands one node into an equivalent subgraph, or declines (returns ``None``)
when an attribute or an unknown rank puts the node outside what it handles; a declined or
unregistered operator falls back to the host (see :mod:`pocgrid.adapt.supplement`).

Every rewrite is checked to compute the same function as the operator it replaces: the tests
run original and rewritten graphs on onnxruntime, and against the ONNX package's own backend
node test cases for the operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from pocgrid.adapt.graph import ValueType

_FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
)


class Builder:
    """Emits the nodes of one expansion, opset-aware, with names unique in the model."""

    def __init__(
        self, node: onnx.NodeProto, opset: int, types: Mapping[str, ValueType], prefix: str
    ) -> None:
        self.node = node
        self.opset = opset
        self.types = types
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0
        self._cast: dict[str, int] = {}
        """Element types of the casts this expansion made (inference has not seen them)."""

    # -- facts about the node's values -------------------------------------------------------

    def attr(self, name: str, default: object) -> object:
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def input(self, i: int) -> str | None:
        """Input ``i``'s name, or None when it is absent or left empty (optional)."""
        if i < len(self.node.input) and self.node.input[i]:
            return str(self.node.input[i])
        return None

    def output_used(self, i: int) -> bool:
        return i < len(self.node.output) and bool(self.node.output[i])

    def elem_type(self, name: str) -> int:
        if name in self._cast:
            return self._cast[name]
        t = self.types.get(name)
        return t.elem_type if t is not None else 0

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        return None if t is None else t.rank

    # -- emitting ----------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def op(
        self, op_type: str, *inputs: str, outputs: Sequence[str] | None = None, **attrs: Any
    ) -> str:
        """Append one node; returns its first output's name."""
        outs = list(outputs) if outputs is not None else [self.fresh(op_type.lower())]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=self.fresh(op_type), **attrs)
        )
        return outs[0]

    def const(self, value: float, like: str) -> str:
        """A scalar constant of ``like``'s element type.

        Values the expansion made itself have no inferred type: they take the type of the
        node's first input, which is what every rewrite here computes in unless it casts.
        """
        first = self.input(0)
        elem = self.elem_type(like) or (self.elem_type(first) if first else 0) or TensorProto.FLOAT
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        arr = np.array(value, dtype=dtype)
        tensor = onnx.numpy_helper.from_array(arr, self.fresh("c"))
        return self.op("Constant", value=tensor)

    def ints(self, values: Sequence[int]) -> str:
        tensor = onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), self.fresh("i"))
        return self.op("Constant", value=tensor)

    def scalar_int(self, value: int) -> str:
        tensor = onnx.numpy_helper.from_array(np.array(value, dtype=np.int64), self.fresh("i"))
        return self.op("Constant", value=tensor)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """A Reduce* over ``axes``: axes are an input from opset 18 (13 for ReduceSum)."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, x, self.ints(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def cast_to_float(self, x: str) -> str:
        y = self.op("Cast", x, to=TensorProto.FLOAT)
        self._cast[y] = TensorProto.FLOAT
        return y

    def out(self, i: int) -> str:
        return str(self.node.output[i])


Expand = Callable[[Builder], bool]
"""Emit the expansion of ``builder.node`` into ``builder``; False declines the node."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    op_type: str
    summary: str
    """What the operator becomes, in words."""
    uses: frozenset[str]
    """Operators the expansion may emit: a runtime must have all of them natively."""
    expand: Expand
    min_opset: int = 1
    """Lowest opset the rewrite handles (older ops had other semantics)."""
    attributes: frozenset[str] = frozenset()
    """Attributes the expansion understands; a node with any other declines (a later opset's
    new attribute must not be silently ignored)."""

    def apply(
        self, node: onnx.NodeProto, opset: int, types: Mapping[str, ValueType], prefix: str
    ) -> list[onnx.NodeProto] | None:
        """The replacement nodes, or None when this node is outside what the rewrite handles."""
        if node.op_type != self.op_type or node.domain not in ("", "ai.onnx"):
            return None
        if opset < self.min_opset:
            return None
        if any(a.name not in self.attributes for a in node.attribute):
            return None
        b = Builder(node, opset, types, prefix)
        if not self.expand(b):
            return None
        produced = {n.op_type for n in b.nodes}
        if not produced <= self.uses:
            raise AssertionError(
                f"rewrite of {self.op_type} emitted {sorted(produced - self.uses)}"
                " outside its declared primitives"
            )
        return b.nodes


# -- activations -------------------------------------------------------------------------------


def _gelu(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    approximate = b.attr("approximate", b"none")
    half_x = b.op("Mul", x, b.const(0.5, x))
    if approximate in (b"tanh", "tanh"):
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.op("Mul", b.op("Mul", x, x), x)
        inner = b.op("Add", x, b.op("Mul", cube, b.const(0.044715, x)))
        t = b.op("Tanh", b.op("Mul", inner, b.const(math.sqrt(2.0 / math.pi), x)))
    elif approximate in (b"none", "none"):
        # 0.5 x (1 + erf(x / sqrt 2))
        t = b.op("Erf", b.op("Div", x, b.const(math.sqrt(2.0), x)))
    else:
        return False
    b.op("Mul", half_x, b.op("Add", t, b.const(1.0, x)), outputs=[b.out(0)])
    return True


def _hard_sigmoid_into(b: Builder, x: str, alpha: float, beta: float) -> str:
    lin = b.op("Add", b.op("Mul", x, b.const(alpha, x)), b.const(beta, x))
    return b.op("Max", b.op("Min", lin, b.const(1.0, x)), b.const(0.0, x))


def _hard_sigmoid(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    alpha = float(b.attr("alpha", 0.2))  # type: ignore[arg-type]
    beta = float(b.attr("beta", 0.5))  # type: ignore[arg-type]
    b.op("Identity", _hard_sigmoid_into(b, x, alpha, beta), outputs=[b.out(0)])
    return True


def _hard_swish(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    b.op("Mul", x, _hard_sigmoid_into(b, x, 1.0 / 6.0, 0.5), outputs=[b.out(0)])
    return True


def _mish(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    b.op("Mul", x, b.op("Tanh", b.op("Softplus", x)), outputs=[b.out(0)])
    return True


def _swish(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    alpha = float(b.attr("alpha", 1.0))  # type: ignore[arg-type]
    b.op("Mul", x, b.op("Sigmoid", b.op("Mul", x, b.const(alpha, x))), outputs=[b.out(0)])
    return True


def _expm1_scaled(b: Builder, x: str, alpha: float) -> str:
    """alpha * (exp(x) - 1)"""
    return b.op("Mul", b.op("Sub", b.op("Exp", x), b.const(1.0, x)), b.const(alpha, x))


def _elu(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    alpha = float(b.attr("alpha", 1.0))  # type: ignore[arg-type]
    positive = b.op("Greater", x, b.const(0.0, x))
    # Exp of the clamped value keeps large positives from overflowing the unused branch.
    neg = _expm1_scaled(b, b.op("Min", x, b.const(0.0, x)), alpha)
    b.op("Where", positive, x, neg, outputs=[b.out(0)])
    return True


def _selu(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    alpha = float(b.attr("alpha", 1.67326319217681884765625))  # type: ignore[arg-type]
    gamma = float(b.attr("gamma", 1.05070102214813232421875))  # type: ignore[arg-type]
    positive = b.op("Greater", x, b.const(0.0, x))
    neg = _expm1_scaled(b, b.op("Min", x, b.const(0.0, x)), alpha)
    y = b.op("Where", positive, x, neg)
    b.op("Mul", y, b.const(gamma, x), outputs=[b.out(0)])
    return True


def _celu(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    alpha = float(b.attr("alpha", 1.0))  # type: ignore[arg-type]
    # max(0, x) + min(0, alpha (exp(x / alpha) - 1))
    scaled = b.op("Div", b.op("Min", x, b.const(0.0, x)), b.const(alpha, x))
    neg = _expm1_scaled(b, scaled, alpha)
    pos = b.op("Max", x, b.const(0.0, x))
    b.op("Add", pos, b.op("Min", neg, b.const(0.0, x)), outputs=[b.out(0)])
    return True


def _softsign(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    b.op("Div", x, b.op("Add", b.op("Abs", x), b.const(1.0, x)), outputs=[b.out(0)])
    return True


def _thresholded_relu(b: Builder) -> bool:
    x = b.input(0)
    assert x is not None
    alpha = float(b.attr("alpha", 1.0))  # type: ignore[arg-type]
    keep = b.op("Greater", x, b.const(alpha, x))
    b.op("Where", keep, x, b.const(0.0, x), outputs=[b.out(0)])
    return True


# -- softmax family ----------------------------------------------------------------------------


def _softmax_core(b: Builder, x: str, axis: int, log: bool) -> str:
    shifted = b.op("Sub", x, b.reduce("ReduceMax", x, [axis]))
    e = b.op("Exp", shifted)
    s = b.reduce("ReduceSum", e, [axis])
    if log:
        return b.op("Sub", shifted, b.op("Log", s))
    return b.op("Div", e, s)


def _softmax_family(log: bool) -> Expand:
    def expand(b: Builder) -> bool:
        x = b.input(0)
        assert x is not None
        if b.opset >= 13:
            axis = int(b.attr("axis", -1))  # type: ignore[call-overload]
            b.op("Identity", _softmax_core(b, x, axis, log), outputs=[b.out(0)])
            return True
        # Before opset 13 the input is coerced to 2-D at ``axis`` and normalised over dim 1.
        axis = int(b.attr("axis", 1))  # type: ignore[call-overload]
        flat = b.op("Flatten", x, axis=axis)
        y = _softmax_core(b, flat, 1, log)
        b.op("Reshape", y, b.op("Shape", x), outputs=[b.out(0)])
        return True

    return expand


# -- normalisations ----------------------------------------------------------------------------


def _trailing_axes(b: Builder, x: str, axis: int) -> list[int] | None:
    """Axes ``axis`` .. last: negative ones need no rank, positive ones do."""
    if axis < 0:
        return list(range(axis, 0))
    rank = b.rank(x)
    if rank is None:
        return None
    return list(range(axis, rank))


def _compute_input(b: Builder, x: str, stash_type: int) -> tuple[str, bool]:
    """The value to normalise in: float32 when the op asks for it and x is not float32."""
    elem = b.elem_type(x)
    if stash_type == TensorProto.FLOAT and elem != TensorProto.FLOAT:
        if elem not in _FLOAT_TYPES:
            return x, False
        return b.cast_to_float(x), True
    return x, False


def _layer_norm(b: Builder) -> bool:
    x, scale, bias = b.input(0), b.input(1), b.input(2)
    assert x is not None and scale is not None
    axis = int(b.attr("axis", -1))  # type: ignore[call-overload]
    eps = float(b.attr("epsilon", 1e-5))  # type: ignore[arg-type]
    stash = int(b.attr("stash_type", 1))  # type: ignore[call-overload]
    axes = _trailing_axes(b, x, axis)
    if axes is None:
        return False
    xc, cast = _compute_input(b, x, stash)
    mean = b.reduce("ReduceMean", xc, axes)
    d = b.op("Sub", xc, mean)
    var = b.reduce("ReduceMean", b.op("Mul", d, d), axes)
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.const(eps, xc))))
    normed = b.op("Mul", d, inv_std)
    if cast:
        normed = (
            b.op("CastLike", normed, x)
            if b.opset >= 15
            else b.op("Cast", normed, to=b.elem_type(x))
        )
    y = b.op("Mul", normed, scale)
    if bias is not None:
        y = b.op("Add", y, bias)
    b.op("Identity", y, outputs=[b.out(0)])
    if b.output_used(1):
        b.op("Identity", mean, outputs=[b.out(1)])
    if b.output_used(2):
        b.op("Identity", inv_std, outputs=[b.out(2)])
    return True


def _rms_norm(b: Builder) -> bool:
    x, scale = b.input(0), b.input(1)
    assert x is not None and scale is not None
    axis = int(b.attr("axis", -1))  # type: ignore[call-overload]
    eps = float(b.attr("epsilon", 1e-5))  # type: ignore[arg-type]
    stash = int(b.attr("stash_type", 1))  # type: ignore[call-overload]
    axes = _trailing_axes(b, x, axis)
    if axes is None:
        return False
    xc, cast = _compute_input(b, x, stash)
    ms = b.reduce("ReduceMean", b.op("Mul", xc, xc), axes)
    inv_rms = b.op("Reciprocal", b.op("Sqrt", b.op("Add", ms, b.const(eps, xc))))
    normed = b.op("Mul", xc, inv_rms)
    if cast:
        normed = b.op("CastLike", normed, x)
    b.op("Mul", normed, scale, outputs=[b.out(0)])
    return True


def _instance_norm(b: Builder) -> bool:
    x, scale, bias = b.input(0), b.input(1), b.input(2)
    assert x is not None and scale is not None and bias is not None
    rank = b.rank(x)
    if rank is None or rank < 3:
        return False
    eps = float(b.attr("epsilon", 1e-5))  # type: ignore[arg-type]
    axes = list(range(2, rank))
    mean = b.reduce("ReduceMean", x, axes)
    d = b.op("Sub", x, mean)
    var = b.reduce("ReduceMean", b.op("Mul", d, d), axes)
    normed = b.op("Div", d, b.op("Sqrt", b.op("Add", var, b.const(eps, x))))
    # scale and bias are per channel (C,): broadcast them as (C, 1, ..., 1).
    trailing = list(range(1, rank - 1))
    s = (
        b.op("Unsqueeze", scale, b.ints(trailing))
        if b.opset >= 13
        else b.op("Unsqueeze", scale, axes=trailing)
    )
    c = (
        b.op("Unsqueeze", bias, b.ints(trailing))
        if b.opset >= 13
        else b.op("Unsqueeze", bias, axes=trailing)
    )
    b.op("Add", b.op("Mul", normed, s), c, outputs=[b.out(0)])
    return True


# -- attention (opset 23) ----------------------------------------------------------------------


def _static_dims(b: Builder, name: str) -> tuple[int | None, ...] | None:
    t = b.types.get(name)
    return None if t is None else t.shape


def _split_heads(b: Builder, x: str, heads: int) -> str:
    """(B, S, H*D) -> (B, H, S, D)."""
    split = b.op("Reshape", x, b.ints([0, 0, heads, -1]))
    return b.op("Transpose", split, perm=[0, 2, 1, 3])


def _attention(b: Builder) -> bool:
    """Y = softmax(softcap(Q K^T * scale) + mask) V, with or without a KV cache.

    Handles 3-D (packed heads) and 4-D inputs, grouped-query heads, a boolean or additive mask
    as long as the keys, causal masking (bottom-right aligned after a cache), scale, softcap,
    and the past/present key and value cache of a decoder. Declines the qk output, the padded
    cache of later opsets, a softmax precision other than the input's, and masks that need
    padding; those fall back to the host.
    """
    q, k, v, mask = b.input(0), b.input(1), b.input(2), b.input(3)
    past_k, past_v = b.input(4), b.input(5)
    assert q is not None and k is not None and v is not None
    if (past_k is None) != (past_v is None):
        return False
    if any(b.input(i) is not None for i in range(6, len(b.node.input))):
        return False
    if b.output_used(3):
        return False
    precision = int(b.attr("softmax_precision", 0))  # type: ignore[call-overload]
    if precision not in (0, b.elem_type(q)):
        return False
    q_dims, k_dims = _static_dims(b, q), _static_dims(b, k)
    if q_dims is None or k_dims is None or len(q_dims) != len(k_dims):
        return False
    rank = len(q_dims)
    if rank == 3:
        q_heads = int(b.attr("q_num_heads", 0))  # type: ignore[call-overload]
        kv_heads = int(b.attr("kv_num_heads", 0))  # type: ignore[call-overload]
        hidden = q_dims[2]
        if not q_heads or not kv_heads or hidden is None or hidden % q_heads:
            return False
        head_dim: int | None = hidden // q_heads
        kv_len = k_dims[1]
    elif rank == 4:
        q_heads_, kv_heads_, head_dim = q_dims[1], k_dims[1], q_dims[3]
        if q_heads_ is None or kv_heads_ is None:
            return False
        q_heads, kv_heads = q_heads_, kv_heads_
        kv_len = k_dims[2]
    else:
        return False
    if head_dim is None or q_heads % kv_heads:
        return False
    if past_k is not None:
        p_dims = _static_dims(b, past_k)
        past_len = None if p_dims is None or len(p_dims) != 4 else p_dims[2]
        kv_len = None if past_len is None or kv_len is None else past_len + kv_len
    if mask is not None:
        m_dims = _static_dims(b, mask)
        if m_dims is None or not m_dims or m_dims[-1] is None or m_dims[-1] != kv_len:
            return False
    if rank == 3:
        q, k, v = (
            _split_heads(b, q, q_heads),
            _split_heads(b, k, kv_heads),
            _split_heads(b, v, kv_heads),
        )
    offset: str | None = None
    if past_k is not None and past_v is not None:
        offset = b.op("Gather", b.op("Shape", past_k), b.scalar_int(2), axis=0)
        k = b.op("Concat", past_k, k, axis=2)
        v = b.op("Concat", past_v, v, axis=2)
    if b.output_used(1):
        b.op("Identity", k, outputs=[b.out(1)])
    if b.output_used(2):
        b.op("Identity", v, outputs=[b.out(2)])
    scale_attr = b.attr("scale", None)
    scale = 1.0 / math.sqrt(head_dim) if scale_attr is None else float(scale_attr)  # type: ignore[arg-type]
    if kv_heads != q_heads:
        # Grouped-query: each KV head serves q_heads / kv_heads query heads.
        group = q_heads // kv_heads
        k = _repeat_heads(b, k, group)
        v = _repeat_heads(b, v, group)
    # Scale Q and K by sqrt(scale) each, as the ONNX function body does (keeps fp16 in range).
    like = str(b.node.input[0])
    root = b.const(math.sqrt(scale), like)
    kt = b.op("Transpose", b.op("Mul", k, root), perm=[0, 1, 3, 2])
    scores = b.op("MatMul", b.op("Mul", q, root), kt)
    softcap = float(b.attr("softcap", 0.0))  # type: ignore[arg-type]
    if softcap > 0:
        cap = b.const(softcap, like)
        scores = b.op("Mul", b.op("Tanh", b.op("Div", scores, cap)), cap)
    bias: str | None = None
    if mask is not None:
        if b.elem_type(mask) == TensorProto.BOOL:
            bias = b.op("Where", mask, b.const(0.0, like), b.const(-np.inf, like))
        else:
            bias = mask
    if int(b.attr("is_causal", 0)):  # type: ignore[call-overload]
        causal = _causal_bias(b, scores, like, offset)
        bias = causal if bias is None else b.op("Add", bias, causal)
    if bias is not None:
        scores = b.op("Add", scores, bias)
    probs = _softmax_core(b, scores, -1, log=False)
    # A fully masked row is all -inf and softmaxes to NaN; the spec gives it zeros.
    probs = b.op("Where", b.op("IsNaN", probs), b.const(0.0, like), probs)
    if rank == 4:
        b.op("MatMul", probs, v, outputs=[b.out(0)])
        return True
    y = b.op("Transpose", b.op("MatMul", probs, v), perm=[0, 2, 1, 3])  # (B, S, H, Dv)
    b.op("Reshape", y, b.ints([0, 0, -1]), outputs=[b.out(0)])
    return True


def _repeat_heads(b: Builder, x: str, group: int) -> str:
    """(B, H, S, D) -> (B, H*group, S, D), each head repeated ``group`` times in place."""
    shape = b.op("Shape", x)
    expanded = b.op("Unsqueeze", x, b.ints([2]))  # (B, H, 1, S, D)
    dims = [b.op("Gather", shape, b.ints([i]), axis=0) for i in range(4)]
    target = b.op("Concat", dims[0], dims[1], b.ints([group]), dims[2], dims[3], axis=0)
    tiled = b.op("Expand", expanded, target)
    heads = b.op("Mul", dims[1], b.ints([group]))
    return b.op("Reshape", tiled, b.op("Concat", dims[0], heads, dims[2], dims[3], axis=0))


def _causal_bias(b: Builder, scores: str, like: str, offset: str | None) -> str:
    """0 where key j <= query i + offset, -inf above: shape (S_q, S_kv).

    ``offset`` is the cached length (a 0-D int64): the new queries sit after the cache, so the
    mask is aligned bottom-right; without a cache it is the plain top-left lower triangle.
    """
    shape = b.op("Shape", scores)
    sq = b.op("Gather", shape, b.ints([2]), axis=0)
    skv = b.op("Gather", shape, b.ints([3]), axis=0)
    ones = b.op(
        "ConstantOfShape",
        b.op("Concat", sq, skv, axis=0),
        value=onnx.numpy_helper.from_array(np.array([1.0], np.float32), b.fresh("one")),
    )
    tri = b.op("Trilu", ones, upper=0) if offset is None else b.op("Trilu", ones, offset, upper=0)
    allowed = b.op("Cast", tri, to=TensorProto.BOOL)
    return b.op("Where", allowed, b.const(0.0, like), b.const(-np.inf, like))


def _slice(b: Builder, x: str, start: int, end: int, step: int = 1) -> str:
    """x[..., start:end:step] on the last axis of a 4-D value."""
    return b.op("Slice", x, b.ints([start]), b.ints([end]), b.ints([3]), b.ints([step]))


def _rotary(b: Builder) -> bool:
    """Rotate (x1, x2) pairs by the cached angles: the half-split or interleaved layout.

    Works in (B, S, H, D): a 4-D input (B, H, S, D) is transposed in and out, a 3-D one
    (B, S, H*D) is split into ``num_heads`` and joined back. Needs the head size statically.
    """
    x, cos, sin, pos = b.input(0), b.input(1), b.input(2), b.input(3)
    assert x is not None and cos is not None and sin is not None
    dims = _static_dims(b, x)
    if dims is None or len(dims) not in (3, 4):
        return False
    num_heads = int(b.attr("num_heads", 0))  # type: ignore[call-overload]
    if len(dims) == 4:
        head = dims[3]
        xs = b.op("Transpose", x, perm=[0, 2, 1, 3])
    else:
        if not num_heads or dims[2] is None or dims[2] % num_heads:
            return False
        head = dims[2] // num_heads
        xs = b.op("Reshape", x, b.ints([0, 0, num_heads, -1]))
    if head is None:
        return False
    rd = int(b.attr("rotary_embedding_dim", 0)) or head  # type: ignore[call-overload]
    if rd > head or rd % 2:
        return False
    half = rd // 2
    if pos is not None:
        cos = b.op("Gather", cos, pos, axis=0)
        sin = b.op("Gather", sin, pos, axis=0)
    cos = b.op("Unsqueeze", cos, b.ints([2]))  # (B, S, 1, rd/2)
    sin = b.op("Unsqueeze", sin, b.ints([2]))
    interleaved = bool(int(b.attr("interleaved", 0)))  # type: ignore[call-overload]
    if interleaved:
        x1, x2 = _slice(b, xs, 0, rd, 2), _slice(b, xs, 1, rd, 2)
    else:
        x1, x2 = _slice(b, xs, 0, half), _slice(b, xs, half, rd)
    real = b.op("Sub", b.op("Mul", cos, x1), b.op("Mul", sin, x2))
    imag = b.op("Add", b.op("Mul", sin, x1), b.op("Mul", cos, x2))
    if interleaved:
        pairs = b.op(
            "Concat",
            b.op("Unsqueeze", real, b.ints([-1])),
            b.op("Unsqueeze", imag, b.ints([-1])),
            axis=-1,
        )
        rotated = b.op("Reshape", pairs, b.ints([0, 0, 0, rd]))
    else:
        rotated = b.op("Concat", real, imag, axis=-1)
    if rd < head:
        rotated = b.op("Concat", rotated, _slice(b, xs, rd, head), axis=-1)
    if len(dims) == 4:
        b.op("Transpose", rotated, perm=[0, 2, 1, 3], outputs=[b.out(0)])
    else:
        b.op("Reshape", rotated, b.op("Shape", x), outputs=[b.out(0)])
    return True


def _reg(*rewrites: Rewrite) -> Mapping[str, Rewrite]:
    return MappingProxyType({r.op_type: r for r in rewrites})


#: Every rewrite, by the operator it replaces.
REWRITES: Mapping[str, Rewrite] = _reg(
    Rewrite(
        "RotaryEmbedding",
        "x1 cos - x2 sin, x1 sin + x2 cos on the half-split or interleaved pairs, by Slice,"
        " Mul and Concat; position ids by Gather",
        frozenset(
            {
                "Transpose",
                "Reshape",
                "Gather",
                "Unsqueeze",
                "Slice",
                "Mul",
                "Sub",
                "Add",
                "Concat",
                "Shape",
                "Constant",
            }
        ),
        _rotary,
        min_opset=23,
        attributes=frozenset({"num_heads", "rotary_embedding_dim", "interleaved"}),
    ),
    Rewrite(
        "Gelu",
        "0.5 x (1 + erf(x / sqrt 2)), or the tanh form for approximate='tanh'",
        frozenset({"Mul", "Div", "Add", "Erf", "Tanh", "Constant"}),
        _gelu,
        min_opset=20,
        attributes=frozenset({"approximate"}),
    ),
    Rewrite(
        "HardSigmoid",
        "max(0, min(1, alpha x + beta))",
        frozenset({"Mul", "Add", "Min", "Max", "Identity", "Constant"}),
        _hard_sigmoid,
        attributes=frozenset({"alpha", "beta"}),
    ),
    Rewrite(
        "HardSwish",
        "x * max(0, min(1, x / 6 + 1/2))",
        frozenset({"Mul", "Add", "Min", "Max", "Constant"}),
        _hard_swish,
        min_opset=14,
        attributes=frozenset(),
    ),
    Rewrite(
        "Mish",
        "x * tanh(softplus(x))",
        frozenset({"Mul", "Tanh", "Softplus"}),
        _mish,
        min_opset=18,
        attributes=frozenset(),
    ),
    Rewrite(
        "Swish",
        "x * sigmoid(alpha x)",
        frozenset({"Mul", "Sigmoid", "Constant"}),
        _swish,
        min_opset=24,
        attributes=frozenset({"alpha"}),
    ),
    Rewrite(
        "Elu",
        "where(x > 0, x, alpha (exp(min(x, 0)) - 1))",
        frozenset({"Greater", "Where", "Min", "Exp", "Sub", "Mul", "Constant"}),
        _elu,
        min_opset=6,
        attributes=frozenset({"alpha"}),
    ),
    Rewrite(
        "Selu",
        "gamma * where(x > 0, x, alpha (exp(min(x, 0)) - 1))",
        frozenset({"Greater", "Where", "Min", "Exp", "Sub", "Mul", "Constant"}),
        _selu,
        min_opset=6,
        attributes=frozenset({"alpha", "gamma"}),
    ),
    Rewrite(
        "Celu",
        "max(0, x) + min(0, alpha (exp(x / alpha) - 1))",
        frozenset({"Max", "Min", "Div", "Exp", "Sub", "Mul", "Add", "Constant"}),
        _celu,
        min_opset=12,
        attributes=frozenset({"alpha"}),
    ),
    Rewrite(
        "Softsign",
        "x / (1 + |x|)",
        frozenset({"Div", "Add", "Abs", "Constant"}),
        _softsign,
        attributes=frozenset(),
    ),
    Rewrite(
        "ThresholdedRelu",
        "where(x > alpha, x, 0)",
        frozenset({"Greater", "Where", "Constant"}),
        _thresholded_relu,
        min_opset=10,
        attributes=frozenset({"alpha"}),
    ),
    Rewrite(
        "Softmax",
        "exp(x - max) / sum(exp(x - max)) over the axis",
        frozenset(
            {
                "ReduceMax",
                "ReduceSum",
                "Sub",
                "Exp",
                "Div",
                "Identity",
                "Flatten",
                "Reshape",
                "Shape",
                "Constant",
            }
        ),
        _softmax_family(log=False),
        attributes=frozenset({"axis"}),
    ),
    Rewrite(
        "LogSoftmax",
        "(x - max) - log(sum(exp(x - max))) over the axis",
        frozenset(
            {
                "ReduceMax",
                "ReduceSum",
                "Sub",
                "Exp",
                "Log",
                "Identity",
                "Flatten",
                "Reshape",
                "Shape",
                "Constant",
            }
        ),
        _softmax_family(log=True),
        attributes=frozenset({"axis"}),
    ),
    Rewrite(
        "LayerNormalization",
        "(x - mean) / sqrt(var + eps) * scale + bias over the trailing axes (fp32 stash)",
        frozenset(
            {
                "ReduceMean",
                "Sub",
                "Mul",
                "Add",
                "Sqrt",
                "Reciprocal",
                "Cast",
                "CastLike",
                "Identity",
                "Constant",
            }
        ),
        _layer_norm,
        min_opset=17,
        attributes=frozenset({"axis", "epsilon", "stash_type"}),
    ),
    Rewrite(
        "RMSNormalization",
        "x / sqrt(mean(x^2) + eps) * scale over the trailing axes",
        frozenset(
            {"ReduceMean", "Mul", "Add", "Sqrt", "Reciprocal", "Cast", "CastLike", "Constant"}
        ),
        _rms_norm,
        min_opset=23,
        attributes=frozenset({"axis", "epsilon", "stash_type"}),
    ),
    Rewrite(
        "InstanceNormalization",
        "per-(N, C) mean/variance over spatial axes, then scale/bias",
        frozenset({"ReduceMean", "Sub", "Mul", "Add", "Div", "Sqrt", "Unsqueeze", "Constant"}),
        _instance_norm,
        min_opset=6,
        attributes=frozenset({"epsilon"}),
    ),
    Rewrite(
        "Attention",
        "softmax(softcap(Q K^T * scale) + mask) V in MatMul and reductions; grouped-query heads"
        " repeated; causal mask from Trilu; 3-D inputs split into heads; past/present KV cache"
        " by Concat",
        frozenset(
            {
                "Mul",
                "Identity",
                "Transpose",
                "MatMul",
                "Add",
                "Where",
                "IsNaN",
                "ReduceMax",
                "ReduceSum",
                "Sub",
                "Exp",
                "Div",
                "Shape",
                "Gather",
                "Concat",
                "Unsqueeze",
                "Expand",
                "Reshape",
                "ConstantOfShape",
                "Trilu",
                "Cast",
                "Tanh",
                "Constant",
            }
        ),
        _attention,
        min_opset=23,
        attributes=frozenset(
            {
                "is_causal",
                "kv_num_heads",
                "q_num_heads",
                "qk_matmul_output_mode",
                "scale",
                "softcap",
                "softmax_precision",
            }
        ),
    ),
)
