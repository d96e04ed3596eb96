"""Software passes on an ONNX model, measured on this machine's CPU with onnxruntime.

- **Operator fusion**: the same graph timed under onnxruntime's graph optimization levels
  (``DISABLE_ALL`` against ``ENABLE_ALL``: constant folding, node fusions such as Conv+Relu and
  MatMul+Add, layout changes), one thread, median of repeated runs after a warm-up. The measured
  ratio is this CPU's; a vendor graph compiler's fusions differ, which the plan says.
- **int8 post-training quantization**: onnxruntime's static quantizer (QDQ, int8 weights and
  activations) calibrated on seeded random inputs of the graph's input shapes, and the accuracy
  delta measured on other seeded inputs: the largest output error relative to the fp32
  output's range, and how often the arg-max of the output agrees. Random inputs are not the
  model's real data: the delta is an indication, named as such.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort

CALIBRATION_SAMPLES: Final = 8
EVAL_SAMPLES: Final = 8
TIMING_RUNS: Final = 30


@dataclass(frozen=True, slots=True)
class FusionMeasurement:
    unfused_ms: float
    fused_ms: float

    @property
    def speedup(self) -> float:
        return self.unfused_ms / self.fused_ms


@dataclass(frozen=True, slots=True)
class Int8Measurement:
    max_relative_error: float
    argmax_agreement: float
    model: onnx.ModelProto


def sample_feeds(model: onnx.ModelProto, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded inputs of the graph's input shapes (symbolic dims 1)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim
        ]
        specs.append((vi.name, dims, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    feeds = []
    for _ in range(n):
        feed: dict[str, np.ndarray] = {}
        for name, dims, dtype in specs:
            if np.issubdtype(dtype, np.integer):
                feed[name] = rng.integers(0, 8, dims).astype(dtype)
            else:
                feed[name] = rng.standard_normal(dims).astype(dtype)
        feeds.append(feed)
    return feeds


def _session(model: onnx.ModelProto, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _median_ms(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    sess.run(None, feed)
    times = []
    for _ in range(TIMING_RUNS):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def measure_fusion(model: onnx.ModelProto) -> FusionMeasurement:
    feed = sample_feeds(model, 1, seed=0)[0]
    unfused = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fused = _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    # Interleaved halves so a burst of load on the shared machine hits both alike.
    a1, b1 = _median_ms(unfused, feed), _median_ms(fused, feed)
    b2, a2 = _median_ms(fused, feed), _median_ms(unfused, feed)
    return FusionMeasurement((a1 + a2) / 2, (b1 + b2) / 2)


def measure_int8(model: onnx.ModelProto) -> Int8Measurement:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    calibration = sample_feeds(model, CALIBRATION_SAMPLES, seed=1)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        quantized = onnx.load(dst)
    ref = _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    q = _session(quantized, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    worst, agree, total = 0.0, 0, 0
    for feed in sample_feeds(model, EVAL_SAMPLES, seed=2):
        a = np.asarray(ref.run(None, feed)[0], dtype=np.float64)
        b = np.asarray(q.run(None, feed)[0], dtype=np.float64)
        scale = float(np.max(np.abs(a))) or 1.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
        if a.ndim >= 1 and a.shape[-1] > 1:
            agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            total += int(np.prod(a.shape[:-1]))
    return Int8Measurement(worst, agree / total if total else 1.0, quantized)
