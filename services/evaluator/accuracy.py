"""Measured accuracy of a real model on an emulated chip, per precision, against the fp32 CPU
reference.

The samples go through the chip's agent with ``RunTask`` (real numerics: onnxruntime on the
agent's host with the chip's precision emulated, see ``services/agent/work/numerics.py``), in
batches sized to fit the gRPC message limit, and each prediction (argmax of the named output)
is compared with its label and with the prediction of a plain fp32 onnxruntime run on this
host (the reference, computed once per model and sample set).

The scoring and batching here are pure functions; the one I/O step is the ``RunTask`` callable
the caller passes in, so the caller keeps its channel, deadline and tenant metadata, and tests
can pass a real agent's stub.

Entry points, for the evaluator (signatures kept stable):

- ``fp32_reference(model, samples) -> Reference``
- ``await measure_accuracy(run_task, model, samples, chip=..., precision=..., ...)
  -> PrecisionAccuracy``
- ``await measure_chip_accuracy(run_task, model, samples, chip=..., catalog=..., ...)
  -> list[PrecisionAccuracy]``: every precision ``Catalog.precisions`` gives the chip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from pocgrid.catalog import Catalog, Chip
from pocgrid.precision import to_proto
from pocgrid.tensors import from_array, to_array
from pocgrid.v1 import agent_pb2

RunTask = Callable[[agent_pb2.RunTaskRequest], Awaitable[agent_pb2.RunTaskResponse]]
"""One ``AgentService.RunTask`` call to the chip's agent, e.g.
``lambda r: stub.RunTask(r, metadata=(("x-pocgrid-tenant", tenant),), timeout=30)``."""

DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
"""gRPC's limit on one message in this mesh (``POCGRID_MAX_MESSAGE_BYTES``' default)."""
MESSAGE_MARGIN_BYTES: Final = 64 * 1024
"""Left free in each request and response for the protobuf framing, names and shapes."""
DEFAULT_MAX_BATCH: Final = 256
"""Rows per RunTask: large enough to amortise a call, small enough to keep each short."""
_WIRE_DTYPES: Final = (np.float32, np.float16, np.int64, np.int32)
_PREFIX_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TASK_ID_MAX: Final = 63


class AccuracyInputError(ValueError):
    """Samples, model or arguments that cannot be measured; names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True, slots=True)
class LabelledSamples:
    """A labelled sample set for a classifier-shaped model."""

    inputs: Mapping[str, NDArray[Any]]
    """Graph input name -> array [N, ...] (float32, float16, int64 or int32), row i one sample."""
    labels: NDArray[np.int64]
    """[N] class index of each sample."""
    output: str
    """The graph output whose argmax over axis 1 is the prediction ([N, classes])."""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise AccuracyInputError("samples.inputs", "must name at least one graph input")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise AccuracyInputError("samples.labels", "must be a non-empty 1-D integer array")
        for name, array in self.inputs.items():
            if array.dtype not in _WIRE_DTYPES:
                raise AccuracyInputError(
                    f"samples.inputs[{name}]",
                    f"dtype must be float32, float16, int64 or int32 (got {array.dtype})",
                )
            if array.ndim < 1 or array.shape[0] != labels.size:
                raise AccuracyInputError(
                    f"samples.inputs[{name}]",
                    f"must have one row per label ({labels.size}), got shape {list(array.shape)}",
                )
        if not self.output:
            raise AccuracyInputError("samples.output", "must name a graph output")

    @property
    def count(self) -> int:
        return int(self.labels.size)

    def row_bytes(self) -> int:
        """Request bytes one sample adds (its rows of every input)."""
        return sum(a[:1].nbytes for a in self.inputs.values())

    def rows(self, part: slice) -> dict[str, NDArray[Any]]:
        return {name: np.ascontiguousarray(a[part]) for name, a in self.inputs.items()}

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            a = np.ascontiguousarray(self.inputs[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        h.update(self.output.encode())
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Reference:
    """The fp32 CPU reference: plain onnxruntime on this host, nothing rounded."""

    predictions: NDArray[np.int64]
    accuracy: float
    output_row_bytes: int
    """Response bytes one sample's output takes (float32), for sizing batches."""
    numerics: str


@dataclass(frozen=True, slots=True)
class PrecisionAccuracy:
    """One chip at one precision: the measured accuracy beside the fp32 CPU reference."""

    chip: str
    precision: str
    samples: int
    correct: int | None
    """Samples predicted right; None when the chip could not run the model (see ``reason``)."""
    accuracy: float | None
    reference_accuracy: float
    agreement: float | None
    """Share of samples whose prediction equals the fp32 CPU reference's prediction."""
    numerics: str
    """How the agent produced its outputs (RunTaskResponse.numerics)."""
    batches: int
    busy_device_seconds: float
    """Emulated device time the batches took (virtual clock), summed."""
    reason: str = ""
    """Why nothing was measured (the agent's status code and message); empty when measured."""

    @property
    def measured(self) -> bool:
        return self.accuracy is not None

    @property
    def accuracy_delta(self) -> float | None:
        """Accuracy minus the fp32 reference's (negative: the precision lost accuracy)."""
        return None if self.accuracy is None else self.accuracy - self.reference_accuracy

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["accuracy_delta"] = self.accuracy_delta
        return out


# -- pure steps -----------------------------------------------------------------------------


def plan_batches(
    count: int,
    row_bytes: int,
    output_row_bytes: int,
    model_bytes: int,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> list[slice]:
    """Consecutive row ranges covering ``count`` samples, each request (model + rows) and
    each response (output rows) under ``max_message_bytes`` less a margin for framing."""
    if count <= 0:
        raise AccuracyInputError("samples", "must hold at least one sample")
    if max_batch <= 0:
        raise AccuracyInputError("max_batch", f"must be >= 1 (got {max_batch})")
    room = max_message_bytes - MESSAGE_MARGIN_BYTES
    request_room = room - model_bytes
    if request_room < row_bytes:
        raise AccuracyInputError(
            "model",
            f"{model_bytes} bytes plus one sample ({row_bytes} bytes) do not fit a RunTask "
            f"request of {max_message_bytes} bytes",
        )
    if output_row_bytes > room:
        raise AccuracyInputError(
            "samples.output", f"one sample's output ({output_row_bytes} bytes) exceeds {room}"
        )
    rows = min(
        max_batch,
        request_room // max(row_bytes, 1),
        room // max(output_row_bytes, 1),
        count,
    )
    # Even batches (not a full run and a remainder): the same shapes keep the agent's
    # onnxruntime session on one shape, and one batch's cost stands for every other.
    n_batches = math.ceil(count / rows)
    size = math.ceil(count / n_batches)
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


def predictions(logits: NDArray[Any]) -> NDArray[np.int64]:
    """Class index per row: argmax over axis 1 of an [N, classes] output."""
    array = np.asarray(logits)
    if array.ndim != 2:
        raise AccuracyInputError("output", f"must be [N, classes] (got shape {list(array.shape)})")
    out: NDArray[np.int64] = np.argmax(array, axis=1).astype(np.int64)
    return out


def score(
    predicted: NDArray[np.int64], labels: NDArray[np.int64], reference: NDArray[np.int64]
) -> tuple[int, float, float]:
    """(correct, accuracy, agreement with the reference predictions)."""
    if not predicted.shape == labels.shape == reference.shape:
        raise AccuracyInputError(
            "outputs",
            f"{predicted.shape[0]} predictions for {labels.shape[0]} labels "
            f"and {reference.shape[0]} reference predictions",
        )
    correct = int(np.sum(predicted == labels))
    return correct, correct / labels.size, float(np.mean(predicted == reference))


def task_ids(prefix: str, key: str, precision: str, batches: int) -> list[str]:
    """One RunTask id per batch: stable for a retry (the agent answers a repeated id with its
    first result), distinct per model, sample set, batching and precision (the key)."""
    width = len(str(max(batches - 1, 0)))
    fixed = 1 + 16 + 1 + len(precision) + 1 + width
    if not _PREFIX_RE.match(prefix) or len(prefix) + fixed > _TASK_ID_MAX:
        raise AccuracyInputError(
            "task_prefix",
            f"must match [a-z0-9][a-z0-9._-]* and be at most {_TASK_ID_MAX - fixed} characters",
        )
    return [f"{prefix}-{key[:16]}-{precision}-{i:0{width}d}" for i in range(batches)]


def _batch_key(model: bytes, samples: LabelledSamples, parts: Sequence[slice]) -> str:
    h = hashlib.sha256(model)
    h.update(samples.digest().encode())
    h.update(repr([(p.start, p.stop) for p in parts]).encode())
    return h.hexdigest()


# -- the reference and the measurement ------------------------------------------------------


def fp32_reference(model: bytes, samples: LabelledSamples) -> Reference:
    """Run ``samples`` through ``model`` with plain onnxruntime in fp32 on this host's CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the host's cores are shared by the whole mesh
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a malformed model
        raise AccuracyInputError("model", f"onnxruntime cannot load it: {exc}") from None
    names = [o.name for o in session.get_outputs()]
    if samples.output not in names:
        raise AccuracyInputError("samples.output", f"{samples.output!r} is not among {names}")
    parts = plan_batches(samples.count, samples.row_bytes(), 0, 0, max_batch=1024)
    outs = [np.asarray(session.run([samples.output], samples.rows(p))[0]) for p in parts]
    logits = np.concatenate(outs, axis=0)
    predicted = predictions(logits)
    _, accuracy, _ = score(predicted, samples.labels, predicted)
    return Reference(
        predictions=predicted,
        accuracy=accuracy,
        output_row_bytes=int(logits.shape[1]) * 4,
        numerics=f"onnxruntime {ort.__version__} on the host CPU, fp32, nothing rounded",
    )


async def measure_accuracy(
    run_task: RunTask,
    model: bytes,
    samples: LabelledSamples,
    *,
    chip: str,
    precision: str,
    reference: Reference | None = None,
    task_prefix: str = "acc",
    job_id: str = "",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> PrecisionAccuracy:
    """Accuracy of ``model`` on ``samples`` run by ``chip``'s agent at ``precision``.

    ``run_task`` is one RunTask call to that chip's agent (the caller adds tenant metadata
    and deadline); ``reference`` is ``fp32_reference(model, samples)``, computed here when
    not given (pass it when measuring several precisions). Batches run one after another
    with task ids ``{task_prefix}-{key}-{precision}-{i}``, so a retried measurement is
    answered from the agent's result cache and metered once. Errors of ``run_task``
    (``grpc.aio.AioRpcError``: a precision or operator the chip lacks, out of memory)
    propagate; ``measure_chip_accuracy`` turns them into a reported reason.
    """
    ref = reference if reference is not None else fp32_reference(model, samples)
    wire_precision = to_proto(precision)
    parts = plan_batches(
        samples.count,
        samples.row_bytes(),
        ref.output_row_bytes,
        len(model),
        max_message_bytes=max_message_bytes,
        max_batch=max_batch,
    )
    ids = task_ids(task_prefix, _batch_key(model, samples, parts), precision, len(parts))
    outputs: list[NDArray[Any]] = []
    numerics = ""
    busy = 0.0
    for part, task_id in zip(parts, ids, strict=True):
        response = await run_task(
            agent_pb2.RunTaskRequest(
                task_id=task_id,
                job_id=job_id,
                precision=wire_precision,
                onnx=agent_pb2.OnnxWork(
                    model=model,
                    inputs=[from_array(n, a) for n, a in samples.rows(part).items()],
                ),
            )
        )
        by_name = {t.name: t for t in response.outputs}
        if samples.output not in by_name:
            raise AccuracyInputError(
                "samples.output", f"{samples.output!r} not in the agent's outputs {list(by_name)}"
            )
        outputs.append(np.asarray(to_array(samples.output, by_name[samples.output])))
        numerics = numerics or response.numerics
        busy += response.busy_device_seconds
    predicted = predictions(np.concatenate(outputs, axis=0))
    correct, accuracy, agreement = score(predicted, samples.labels, ref.predictions)
    return PrecisionAccuracy(
        chip=chip,
        precision=precision,
        samples=samples.count,
        correct=correct,
        accuracy=accuracy,
        reference_accuracy=ref.accuracy,
        agreement=agreement,
        numerics=numerics,
        batches=len(parts),
        busy_device_seconds=busy,
    )


async def measure_chip_accuracy(
    run_task: RunTask,
    model: bytes,
    samples: LabelledSamples,
    *,
    chip: Chip,
    catalog: Catalog,
    reference: Reference | None = None,
    precisions: Sequence[str] | None = None,
    task_prefix: str = "acc",
    job_id: str = "",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> list[PrecisionAccuracy]:
    """``measure_accuracy`` at every precision the chip's runtime runs
    (``catalog.precisions(chip)``, or the subset ``precisions`` of them), in that order.

    A precision the agent refuses (an RPC error) is reported with ``reason`` set to the
    status code and message and no accuracy, not dropped.
    """
    supported = catalog.precisions(chip)
    if precisions is None:
        chosen: Sequence[str] = supported
    else:
        unknown = [p for p in precisions if p not in supported]
        if unknown:
            raise AccuracyInputError(
                "precisions",
                f"{', '.join(unknown)} not run by {chip.name} (it runs {', '.join(supported)})",
            )
        chosen = precisions
    ref = reference if reference is not None else fp32_reference(model, samples)
    results = []
    for precision in chosen:
        try:
            results.append(
                await measure_accuracy(
                    run_task,
                    model,
                    samples,
                    chip=chip.name,
                    precision=precision,
                    reference=ref,
                    task_prefix=task_prefix,
                    job_id=job_id,
                    max_message_bytes=max_message_bytes,
                    max_batch=max_batch,
                )
            )
        except grpc.RpcError as exc:
            # grpc.aio.AioRpcError has code() and details() but is not a grpc.Call.
            code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
            code = code_of() if callable(code_of) else None
            details = details_of() if callable(details_of) else str(exc)
            results.append(
                PrecisionAccuracy(
                    chip=chip.name,
                    precision=precision,
                    samples=samples.count,
                    correct=None,
                    accuracy=None,
                    reference_accuracy=ref.accuracy,
                    agreement=None,
                    numerics="",
                    batches=0,
                    busy_device_seconds=0.0,
                    reason=f"{getattr(code, 'name', 'UNKNOWN')}: {details}",
                )
            )
    return results
