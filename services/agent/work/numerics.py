"""Real numerics for ONNX work: onnxruntime on the host CPU with the chip's precision emulated.

Weights and inputs are rounded to the precision the chip runs (fp16, bf16 and fp8 by
round-to-nearest-even through ml_dtypes; int8 by symmetric per-tensor quantize-dequantize),
the graph runs in fp32, and outputs are rounded again. Intermediate activations stay fp32, so
the emulated error is a lower bound on the real chip's (its kernels also round in between).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import numpy_helper

_ROUND_TO = {
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "fp8": np.dtype(ml_dtypes.float8_e4m3fn),
}
_CACHE_SIZE = 16


def round_to_precision(array: NDArray[Any], precision: str) -> NDArray[Any]:
    if not np.issubdtype(array.dtype, np.floating):
        return array
    if precision in ("fp32", "tf32"):
        # TF32 rounds only inside matrix units; storage stays fp32.
        return array
    if precision == "int8":
        scale = float(np.max(np.abs(array))) / 127.0 if array.size else 0.0
        if scale == 0.0:
            return array
        return (np.clip(np.round(array / scale), -127, 127) * scale).astype(array.dtype)
    return array.astype(_ROUND_TO[precision]).astype(array.dtype)


def describe(precision: str) -> str:
    how = {
        "fp32": "fp32 (no rounding)",
        "tf32": "tf32 treated as fp32 storage",
        "int8": "int8 emulated by symmetric per-tensor quantize-dequantize of weights, inputs "
        "and outputs",
    }.get(precision, f"{precision} emulated by rounding weights, inputs and outputs")
    return (
        f"onnxruntime {ort.__version__} on the host CPU; {how}; activations inside the graph fp32"
    )


class OnnxRunner:
    """Sessions cached per (model bytes, precision): repeated batches skip re-optimisation."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[tuple[str, str], ort.InferenceSession] = OrderedDict()

    def session(
        self, model: onnx.ModelProto, model_bytes: bytes, precision: str
    ) -> ort.InferenceSession:
        key = (hashlib.sha256(model_bytes).hexdigest(), precision)
        cached = self._sessions.get(key)
        if cached is not None:
            self._sessions.move_to_end(key)
            return cached
        rounded = onnx.ModelProto()
        rounded.CopyFrom(model)
        for init in rounded.graph.initializer:
            array = numpy_helper.to_array(init)
            if np.issubdtype(array.dtype, np.floating):
                init.CopyFrom(
                    numpy_helper.from_array(round_to_precision(array, precision), init.name)
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the host has 2 cores shared by the whole mesh
        session = ort.InferenceSession(
            rounded.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._sessions[key] = session
        if len(self._sessions) > _CACHE_SIZE:
            self._sessions.popitem(last=False)
        return session

    def run(
        self,
        session: ort.InferenceSession,
        inputs: Mapping[str, NDArray[np.generic]],
        precision: str,
    ) -> dict[str, NDArray[np.generic]]:
        feeds = {
            name: round_to_precision(np.ascontiguousarray(a), precision)
            for name, a in inputs.items()
        }
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
        return {
            n: round_to_precision(np.asarray(r), precision)
            for n, r in zip(names, results, strict=True)
        }
