"""Plans for the catalogue's non-LLM models (vision, speech, NLP encoders): precision and batch.

The catalogue gives these models' parameters and, for most, GFLOPs per sample; there is no
graph here, so a sample is priced by the roofline of the chip's achieved ceilings
(:meth:`pocgrid.perf.EfficiencyData.ceilings`): compute ``batch x FLOPs`` at the GEMM ceiling
against memory traffic of the weights once plus activations per sample, combined by the model's
calibrated overlap exponent, plus per-layer overheads. Operators run on the host pay their
transfer over the host link; a decomposed Attention pays its materialised scores. Throughput is
samples per second; an LLM's tokens are not meaningful here, so ``output_tokens_per_s`` is null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from pocgrid.adapt.coverage import Coverage
from pocgrid.adapt.hostlink import host_link
from pocgrid.adapt.plan import QUANTIZED, SIXTEEN_BIT, PlanRequest
from pocgrid.catalog import PRECISION_BYTES, Chip, Model
from pocgrid.perf import default_efficiency
from pocgrid.perf.diffusion import image_batch_time, image_flops
from pocgrid.perf.roofline import combine_terms

BATCH_CHOICES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Activation bytes a sample moves per GFLOP, for models whose graph is not here (estimate:
#: ResNet-50 moves ~0.1 GB of activations for its 8.2 GFLOPs at 16 bits).
ACT_BYTES_PER_GFLOP: Final = 12e6

#: (FLOPs per sample, attention layers, heads, sequence) for the catalogue models without a
#: GFLOPs figure or with attention; FLOPs = 2 x params x tokens where no figure is published.
_SHAPES: Final[Mapping[str, tuple[float | None, int, int, int]]] = {
    "ViT-B/16": (None, 12, 12, 197),
    "BERT-base": (2 * 0.11e9 * 128, 12, 12, 128),
    "Whisper-small": (2 * 0.244e9 * 1500, 24, 12, 1500),
    "Whisper-large-v3": (2 * 1.55e9 * 1500, 64, 20, 1500),
}
#: Bytes a host-run operator ships per sample (the tensor it reads and what it returns).
_HOST_BYTES: Final[Mapping[str, Mapping[str, float]]] = {
    "YOLOv5s": {"NonMaxSuppression": 25200 * 85 * 4},
    "YOLOv8n": {"NonMaxSuppression": 8400 * 84 * 4},
}
_SCORE_PASSES: Final = 10


@dataclass(frozen=True, slots=True)
class DensePlan:
    precision: str
    batch: int
    samples_per_s: float
    latency_ms: float
    devices: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "precision": self.precision,
            "batch": self.batch,
            "devices": self.devices,
            "samples_per_s": self.samples_per_s,
            "latency_ms": self.latency_ms,
        }


def _lookup(table: Mapping[str, object], name: str) -> object | None:
    for prefix, value in table.items():
        if name.startswith(prefix):
            return value
    return None


def sample_flops(model: Model, passes: int = 0) -> float:
    """FLOPs of one sample; a diffusion model's image at ``passes`` steps (0: its default)."""
    if model.diffusion is not None:
        return image_flops(model, passes or None)
    shape = _lookup(_SHAPES, model.name)
    if model.gflops is not None:
        return model.gflops * 1e9
    if isinstance(shape, tuple) and shape[0] is not None:
        return float(shape[0])
    return 2.0 * model.params_b * 1e9 * 256


def price_batch(
    model: Model,
    chip: Chip,
    precision: str,
    batch: int,
    coverage: Coverage | None,
    passes: int = 0,
) -> float:
    """Seconds of one batch on one device: one forward pass, or a diffusion model's whole
    pipeline at ``passes`` denoising steps (0: the model's default)."""
    if model.diffusion is not None:
        return image_batch_time(model, chip, precision, batch, passes or None).seconds
    eff = default_efficiency()
    c = eff.ceilings(chip, precision, eff.params)
    flops = sample_flops(model) * batch
    wb = PRECISION_BYTES[precision]
    ab = 4 if precision in ("fp32", "tf32") else 2
    weights = model.params_b * 1e9 * wb
    acts = sample_flops(model) / 1e9 * ACT_BYTES_PER_GFLOP * batch * ab / 2
    supplemented = {} if coverage is None else coverage.supplemented_ops()
    shape = _lookup(_SHAPES, model.name)
    if supplemented.get("Attention") == "rewrite" and isinstance(shape, tuple):
        _, layers, heads, seq = shape
        acts += layers * heads * seq * seq * _SCORE_PASSES * ab * batch
    terms = combine_terms(
        np.array([flops / c.gemm.rate]),
        np.array([(weights + acts) / c.memory.rate]),
        np.zeros(1),
        eff.params.overlap_exponent,
    )
    t = float(terms[0])
    t += 50 * eff.params.layer_overhead_s
    host = _lookup(_HOST_BYTES, model.name)
    if isinstance(host, Mapping):
        link = host_link(chip)
        for op, nbytes in host.items():
            if supplemented.get(op) == "host":
                t += link.fallback_seconds(float(nbytes) * batch)
    return t


def plan_dense(
    model: Model,
    chip: Chip,
    precisions: list[str],
    req: PlanRequest,
    coverage: Coverage | None,
    latency_ms: float | None,
) -> tuple[DensePlan | None, list[str]]:
    lines: list[str] = []
    best: DensePlan | None = None
    for precision in precisions:
        for batch in BATCH_CHOICES:
            t = price_batch(model, chip, precision, batch, coverage)
            if latency_ms is not None and t * 1e3 > latency_ms:
                break
            cand = DensePlan(precision, batch, batch / t, t * 1e3)
            if best is None or cand.samples_per_s > best.samples_per_s * 1.02:
                best = cand
    if best is not None:
        lines.append(
            f"batch {best.batch} at {best.precision}: {best.samples_per_s:.0f} samples/s,"
            f" {best.latency_ms:.1f} ms per batch"
            + (f" (latency bound {latency_ms:.0f} ms)" if latency_ms is not None else "")
            + "; gains from a larger batch stay under 2 %"
        )
        if math.isfinite(best.samples_per_s) and best.precision in QUANTIZED:
            lines.append("int8/fp8 weights: lossy; accuracy not measured without the weights")
    elif latency_ms is not None:
        lines.append(f"no batch of 1 finishes within {latency_ms:.0f} ms")
    return best, lines


__all__ = ["SIXTEEN_BIT", "DensePlan", "plan_dense", "price_batch"]
