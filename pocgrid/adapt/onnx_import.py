"""Validate an uploaded ONNX file before anything trusts it: size, shape of the bytes, nesting,
declared tensor sizes, the onnx checker, the opset range. Content-addressed by SHA-256.

The checks run in an order that keeps a hostile file cheap to refuse: size first, then the
leading bytes (an ONNX file is a protobuf ``ModelProto`` whose exporters all write
``ir_version``, field 1, first: byte 0x08), then the protobuf parse (upb refuses messages
nested deeper than its recursion limit, so a graph nested thousands deep fails here), then an
iterative walk that bounds graph nesting and every tensor's declared size against what the
file holds, and only then the onnx checker and shape inference. Every refusal is an
:class:`OnnxImportError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Final

import onnx
from google.protobuf.message import DecodeError

from pocgrid.adapt.graph import graphs, opset_version
from pocgrid.adapt.model_ids import imported_model_id

#: Default size limit: under the 4 MiB gRPC message limit, with room for the request's fields.
DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024 - 64 * 1024
MAX_GRAPH_DEPTH: Final = 16
#: Opsets accepted: opset 7 is the oldest onnxruntime still runs; newer than the installed onnx
#: package knows cannot be checked.
MIN_OPSET: Final = 7
MAX_OPSET: Final = onnx.defs.onnx_opset_version()
#: A tensor may declare at most this many bytes beyond what the file itself holds (a constant
#: of shape, say, 1000 x 1000 zeros is fine; 10^12 elements is not).
MAX_DECLARED_BYTES: Final = 256 * 1024 * 1024
_LEADING_BYTE: Final = 0x08
_KNOWN_MAGIC: Final = {
    b"PK\x03\x04": "a zip archive (a PyTorch .pt or a zipped model?)",
    b"\x89PNG": "a PNG image",
    b"\x80\x02": "a Python pickle",
    b"\x80\x04": "a Python pickle",
    b"GGUF": "a GGUF file",
    b"\x93NUMPY": "a NumPy array",
    b"{": "JSON text",
}


class OnnxImportError(ValueError):
    """An uploaded file is not an ONNX model the adapter accepts; the message says why."""


@dataclass(frozen=True, slots=True)
class ImportedOnnx:
    model: onnx.ModelProto
    sha256: str
    size_bytes: int
    opset: int
    ops: dict[str, int]
    graph_name: str

    @property
    def model_id(self) -> str:
        return imported_model_id("onnx", self.sha256)


def _check_leading_bytes(data: bytes) -> None:
    for magic, what in _KNOWN_MAGIC.items():
        if data.startswith(magic):
            raise OnnxImportError(f"onnx: wrong magic: the file is {what}, not an ONNX ModelProto")
    if data[0] != _LEADING_BYTE:
        raise OnnxImportError(
            f"onnx: wrong magic: an ONNX file starts with its ir_version field (byte 0x08),"
            f" this one with 0x{data[0]:02x}"
        )


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise OnnxImportError(
            f"onnx: not a valid ModelProto (truncated, corrupt, or nested too deep): {exc}"
        ) from None
    except RecursionError:
        raise OnnxImportError("onnx: nested too deep to parse") from None
    return model


def _depths(model: onnx.ModelProto) -> int:
    deepest = 0
    stack: list[tuple[onnx.GraphProto, int]] = [(model.graph, 1)]
    while stack:
        g, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_GRAPH_DEPTH:
            raise OnnxImportError(
                f"onnx: graphs nested {depth} deep (If/Loop/Scan bodies); the limit is"
                f" {MAX_GRAPH_DEPTH}"
            )
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append((attr.g, depth + 1))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend((sub, depth + 1) for sub in attr.graphs)
    return deepest


def _tensor_bytes(t: onnx.TensorProto, where: str, budget: int) -> None:
    if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
        raise OnnxImportError(f"onnx: {where} '{t.name}' refers to external data; upload one file")
    n = 1
    for d in t.dims:
        if d < 0:
            raise OnnxImportError(f"onnx: {where} '{t.name}' has a negative dimension {d}")
        n *= d
        if n > 1 << 62:
            break
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # string or unknown types: sized by their contents
        itemsize = 1
    declared = n * itemsize
    if declared > budget:
        raise OnnxImportError(
            f"onnx: {where} '{t.name}' declares shape {list(t.dims)} ({declared:.3g} bytes);"
            f" at most {budget} bytes are accepted"
        )
    if t.raw_data and len(t.raw_data) != declared:
        raise OnnxImportError(
            f"onnx: {where} '{t.name}' declares {declared} bytes but holds {len(t.raw_data)}"
        )


def _check_tensors(model: onnx.ModelProto, size: int) -> None:
    budget = size + MAX_DECLARED_BYTES
    for g in graphs(model.graph):
        for init in g.initializer:
            _tensor_bytes(init, "initializer", budget)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    _tensor_bytes(attr.t, f"{node.op_type} attribute", budget)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        _tensor_bytes(t, f"{node.op_type} attribute", budget)


def validate_onnx(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ImportedOnnx:
    """The parsed, checked model; :class:`OnnxImportError` naming what is wrong otherwise."""
    if not data:
        raise OnnxImportError("onnx: the file is empty")
    if len(data) > max_bytes:
        raise OnnxImportError(f"onnx: {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    _check_leading_bytes(data)
    model = _parse(data)
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxImportError("onnx: the model has no graph nodes (truncated?)")
    _depths(model)
    _check_tensors(model, len(data))
    opset = opset_version(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxImportError(
            f"onnx: default-domain opset {opset} is outside the accepted range"
            f" [{MIN_OPSET}, {MAX_OPSET}]"
        )
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise OnnxImportError(f"onnx: the onnx checker rejects it: {first}") from None
    ops: Counter[str] = Counter()
    for g in graphs(model.graph):
        for node in g.node:
            ops[
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            ] += 1
    return ImportedOnnx(
        model=model,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        opset=opset,
        ops=dict(ops),
        graph_name=model.graph.name,
    )
