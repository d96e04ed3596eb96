"""A tenant's own model in an evaluation: an ONNX graph it imported through the adapter, with a
labelled sample set it imported here (``ImportSampleSet``).

The graph is timed on each chip by the agent's batching server on the graph cost model
(``SampleServing.onnx``), and its accuracy is measured as the project's real models' is
(``services/evaluator/accuracy.py``: the samples through each chip's agent with ``RunTask``,
against the fp32 CPU reference). Everything a user can get wrong is checked when the scenario
is created, each with INVALID_ARGUMENT naming the field: the sample set's tensors and labels,
and whether they fit the graph (input names, dtypes, static dimensions, the output, the label
range, and a real fp32 run).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from pocgrid.catalog import Model
from pocgrid.perf.onnx_cost import node_costs, with_input_shapes
from pocgrid.tensors import TensorError, to_array
from pocgrid.v1 import adapter_pb2, evaluator_pb2
from services.core.errors import FailedPrecondition, InvalidArgument
from services.evaluator.accuracy import (
    AccuracyInputError,
    LabelledSamples,
    Reference,
    fp32_reference,
)

MAX_SAMPLES: Final = 10_000
"""Labelled samples one set may hold: enough for an accuracy to 1 %, small enough to run on
every chip of the pool in one evaluation."""
_ONNX_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    onnx.TensorProto.FLOAT: np.dtype("float32"),
    onnx.TensorProto.FLOAT16: np.dtype("float16"),
    onnx.TensorProto.INT64: np.dtype("int64"),
    onnx.TensorProto.INT32: np.dtype("int32"),
}
_CACHED: Final = 16


def decode_sample_set(request: evaluator_pb2.ImportSampleSetRequest) -> LabelledSamples:
    """The request's samples, or INVALID_ARGUMENT naming the field and the rule."""
    if len(request.name) > 256:
        raise InvalidArgument("name", "must be at most 256 characters")
    if not request.output or len(request.output) > 256:
        raise InvalidArgument("output", "must name the graph output (1-256 characters)")
    if not 1 <= len(request.labels) <= MAX_SAMPLES:
        raise InvalidArgument("labels", f"must hold 1 to {MAX_SAMPLES} labels, one per sample")
    labels = np.asarray(request.labels, dtype=np.int64)
    if np.any(labels < 0):
        raise InvalidArgument("labels", "class indexes must be >= 0")
    if not request.inputs:
        raise InvalidArgument("inputs", "must hold one tensor per graph input")
    inputs: dict[str, NDArray[Any]] = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}]"
        if not tensor.name:
            raise InvalidArgument(f"{field}.name", "must name the graph input")
        if tensor.name in inputs:
            raise InvalidArgument(f"{field}.name", f"{tensor.name!r} appears more than once")
        try:
            array = to_array(field, tensor)
        except TensorError as exc:
            raise InvalidArgument(exc.field, exc.rule) from None
        if array.ndim < 1 or array.shape[0] != labels.size:
            raise InvalidArgument(
                f"{field}.shape",
                f"the leading dimension must be the sample count ({labels.size} labels),"
                f" got {list(array.shape)}",
            )
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InvalidArgument(f"{field}.data", "must be finite (no NaN or infinity)")
        inputs[tensor.name] = array
    return LabelledSamples(inputs=inputs, labels=labels, output=request.output)


def sample_set_payload(request: evaluator_pb2.ImportSampleSetRequest) -> bytes:
    """What is stored and hashed: the samples without the name (the same samples under two
    names are one set)."""
    body = evaluator_pb2.ImportSampleSetRequest()
    body.CopyFrom(request)
    body.name = ""
    return body.SerializeToString(deterministic=True)


def sample_set_id(payload: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(payload).hexdigest()
    return f"samples-{digest[:16]}", digest


@dataclass(frozen=True, slots=True)
class UserModel:
    """A tenant's graph and samples, checked against each other, ready to evaluate."""

    model_id: str
    name: str
    onnx: bytes
    sample_set_id: str
    samples: LabelledSamples
    reference: Reference
    sample_shapes: dict[str, list[int]]
    """One sample's shape per input, without the batch dimension (``SampleServing``)."""
    model: Model
    """The graph as a model record (kind ``onnx``): parameters and FLOPs per sample, for the
    memory fit and MFU."""


def check_against_graph(
    model_id: str, name: str, data: bytes, sample_set: str, samples: LabelledSamples
) -> UserModel:
    """The sample set fits the graph and the graph runs it in fp32 on this host; or
    INVALID_ARGUMENT naming ``scenario.sample_set`` or ``scenario.onnx_model_hash``."""
    field = "scenario.sample_set"
    try:
        graph = onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as exc:
        raise InvalidArgument("scenario.onnx_model_hash", f"is not an ONNX model: {exc}") from None
    inits = {i.name for i in graph.graph.initializer}
    graph_inputs = {i.name: i for i in graph.graph.input if i.name not in inits}
    if set(samples.inputs) != set(graph_inputs):
        raise InvalidArgument(
            field,
            f"its inputs {sorted(samples.inputs)} must be exactly the graph inputs"
            f" {sorted(graph_inputs)}",
        )
    shapes: dict[str, list[int]] = {}
    for input_name, vi in graph_inputs.items():
        array = samples.inputs[input_name]
        tensor_type = vi.type.tensor_type
        want = _ONNX_DTYPES.get(tensor_type.elem_type)
        if want is None or array.dtype != want:
            raise InvalidArgument(
                field,
                f"input {input_name!r} is {array.dtype}; the graph takes"
                f" {onnx.TensorProto.DataType.Name(tensor_type.elem_type)}",
            )
        dims = list(tensor_type.shape.dim)
        if len(dims) != array.ndim:
            raise InvalidArgument(
                field,
                f"input {input_name!r} has {array.ndim} dimensions; the graph's has {len(dims)}",
            )
        for axis, d in enumerate(dims[1:], start=1):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != array.shape[axis]:
                raise InvalidArgument(
                    field,
                    f"input {input_name!r} dimension {axis} is {array.shape[axis]}; the graph"
                    f" fixes it at {d.dim_value}",
                )
        shapes[input_name] = [int(x) for x in array.shape[1:]]
    outputs = [o.name for o in graph.graph.output]
    if samples.output not in outputs:
        raise InvalidArgument(field, f"output {samples.output!r} is not among {outputs}")
    try:
        reference = fp32_reference(data, samples)
    except AccuracyInputError as exc:
        raise InvalidArgument(field, str(exc)) from None
    except Exception as exc:  # onnxruntime raises its own types when a run fails
        raise InvalidArgument(field, f"the model does not run on these samples: {exc}") from None
    classes = reference.output_row_bytes // 4
    if int(samples.labels.max()) >= classes:
        raise InvalidArgument(
            field,
            f"labels must be below the output's {classes} classes (max label"
            f" {int(samples.labels.max())})",
        )
    shaped = with_input_shapes(graph, {n: [1, *s] for n, s in shapes.items()})
    flops = sum(c.flops for c in node_costs(shaped, 4.0))
    params = sum(math.prod(init.dims) for init in graph.graph.initializer)
    record = Model(
        name=model_id,
        kind="onnx",
        task="classification",
        params_b=params / 1e9,
        sources=("imported by the tenant (AdapterService.ImportOnnxModel)",),
        notes=f"{name}: the tenant's ONNX graph, priced on the graph cost model",
        gflops=flops / 1e9,
        input_shape=", ".join(f"{n}: {s}" for n, s in shapes.items()),
    )
    return UserModel(model_id, name, data, sample_set, samples, reference, shapes, record)


GetModel = Callable[
    [adapter_pb2.GetImportedModelRequest], Awaitable[adapter_pb2.GetImportedModelResponse]
]
GetSamples = Callable[[str, str], Awaitable[evaluator_pb2.ImportSampleSetRequest | None]]


class UserModels:
    """Resolves a user scenario's model and samples (the adapter's file, the evaluator's own
    sample set), checked against each other; the last few are kept, with their fp32
    reference, so an evaluation's chips do not fetch and rerun them."""

    def __init__(self, get_model: GetModel | None, get_samples: GetSamples) -> None:
        self._get_model = get_model
        self._get_samples = get_samples
        self._cache: OrderedDict[tuple[str, str, str], UserModel] = OrderedDict()

    async def load(self, tenant: str, scenario: evaluator_pb2.Scenario) -> UserModel:
        key = (tenant, scenario.onnx_model_hash, scenario.sample_set)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if not scenario.onnx_model_hash.startswith("onnx-"):
            raise InvalidArgument(
                "scenario.onnx_model_hash",
                "must be the model_id of an ONNX model imported with AdapterService"
                ".ImportOnnxModel (onnx-...)",
            )
        if not scenario.sample_set:
            raise InvalidArgument(
                "scenario.sample_set", "is required with onnx_model_hash (ImportSampleSet)"
            )
        if self._get_model is None:
            raise FailedPrecondition(
                "the evaluator has no adapter to read imported models from"
                " (POCGRID_ADAPTER_ADDR is not set)"
            )
        try:
            got = await self._get_model(
                adapter_pb2.GetImportedModelRequest(
                    model_id=scenario.onnx_model_hash, include_content=True
                )
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidArgument(
                    "scenario.onnx_model_hash",
                    f"no imported ONNX model {scenario.onnx_model_hash!r} of your tenant",
                ) from None
            raise
        if got.model.kind != "onnx":
            raise InvalidArgument("scenario.onnx_model_hash", "must name an ONNX import")
        stored = await self._get_samples(tenant, scenario.sample_set)
        if stored is None:
            raise InvalidArgument(
                "scenario.sample_set", f"no sample set {scenario.sample_set!r} of your tenant"
            )
        samples = decode_sample_set(stored)
        # onnxruntime's fp32 run and the shape inference are CPU work: off the event loop.
        user = await asyncio.to_thread(
            check_against_graph,
            scenario.onnx_model_hash,
            got.model.name,
            got.content,
            scenario.sample_set,
            samples,
        )
        self._cache[key] = user
        while len(self._cache) > _CACHED:
            self._cache.popitem(last=False)
        return user
