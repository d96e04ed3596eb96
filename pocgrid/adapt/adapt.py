"""Adapt a catalogue model to a chip: coverage, supplementation, the best plan, the matrix.

The entry points the CLI, the adapter service and the benchmark call. Everything here reads the
catalogue (chips, models, per-chip operator sets and runtime precisions) and prices through the
one performance model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import onnx

from pocgrid.adapt.coverage import Coverage, graph_coverage, signature_coverage
from pocgrid.adapt.dense_plan import DensePlan, plan_dense
from pocgrid.adapt.hostlink import host_link
from pocgrid.adapt.onnx_passes import measure_fusion, measure_int8
from pocgrid.adapt.plan import (
    PassResult,
    Plan,
    PlanRequest,
    Verdict,
    plan_llm,
    precision_choices,
    simulate_plan,
    supported_precisions,
)
from pocgrid.adapt.signatures import operator_signature
from pocgrid.catalog import Catalog, Chip, Model
from pocgrid.perf.onnx_cost import graph_cost

#: Keys of one matrix cell, in order.
CELL_KEYS: Final = (
    "model",
    "chip",
    "verdict",
    "precision",
    "devices",
    "tp",
    "replicas",
    "passes",
    "output_tokens_per_s",
    "reason",
)


def chip_coverage(catalog: Catalog, model: Model, chip: Chip) -> Coverage | None:
    """Per-operator coverage of a catalogue model on ``chip``'s runtime."""
    ops = operator_signature(model)
    if ops is None:
        return None
    gaps = {op: g.reason for op, g in catalog.operator_gaps(chip).items()}
    return signature_coverage(model.name, chip.name, ops, catalog.native_operators(chip), gaps)


@dataclass(frozen=True, slots=True)
class Adaptation:
    """One model on one chip: the LLM plan, or the dense-model plan, with the verdict."""

    model: str
    chip: str
    kind: str
    verdict: Verdict
    reason: str
    coverage: Coverage | None
    plan: Plan | None = None
    dense: DensePlan | None = None
    explanation: tuple[str, ...] = ()
    passes: tuple[PassResult, ...] = ()
    """Passes considered for a non-LLM model (an LLM's are in ``plan``)."""

    def supplement_passes(self) -> list[str]:
        if self.coverage is None:
            return []
        return [
            f"supplement:{op}:{method}"
            for op, method in sorted(self.coverage.supplemented_ops().items())
        ]

    def cell(self) -> dict[str, object]:
        """The matrix cell: the keys of ``CELL_KEYS``."""
        p = None if self.plan is None else self.plan.best
        d = self.dense
        passes = self.supplement_passes() + ([] if p is None else list(p.passes))
        return {
            "model": self.model,
            "chip": self.chip,
            "verdict": self.verdict,
            "precision": p.precision if p else (d.precision if d else None),
            "devices": p.devices
            if p
            else (d.devices if d else (self.plan.devices_needed if self.plan else None)),
            "tp": p.tp if p else (1 if d else None),
            "pp": p.pp if p else (1 if d else None),
            "replicas": p.replicas if p else (1 if d else None),
            "passes": passes,
            "output_tokens_per_s": None if p is None else p.output_tokens_per_s,
            "reason": self.reason,
            "kind": self.kind,
            "samples_per_s": None if d is None else d.samples_per_s,
            "max_num_seqs": None if p is None else p.max_num_seqs,
            "batch": None if d is None else d.batch,
            "explanation": list(self.explanation),
            "pass_gains": {
                q.name: {"gain": q.gain, "applied": q.applied, "measured_gain": q.measured_gain}
                for q in self.all_passes()
            },
        }

    def all_passes(self) -> tuple[PassResult, ...]:
        """Every pass considered: an LLM plan's, or a non-LLM model's."""
        return (*(() if self.plan is None else self.plan.passes), *self.passes)

    def to_dict(self) -> dict[str, object]:
        out = self.cell()
        out["coverage"] = None if self.coverage is None else self.coverage.to_dict()
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        if self.dense is not None:
            out["dense_plan"] = self.dense.to_dict()
        if self.passes:
            out["passes_considered"] = [p.to_dict() for p in self.passes]
        return out


def adapt(
    catalog: Catalog, model: Model, chip: Chip, req: PlanRequest, *, simulate: bool = False
) -> Adaptation:
    """``simulate``: replay an LLM's best plan in the serving simulator (single plans; the
    matrix leaves it off)."""
    coverage = chip_coverage(catalog, model, chip)
    runtime = catalog.precisions(chip)
    if model.arch is not None:
        plan = plan_llm(model, chip, req, coverage, runtime)
        if simulate:
            plan = simulate_plan(model, chip, plan)
        return Adaptation(
            model.name,
            chip.name,
            model.kind,
            plan.verdict,
            plan.reason,
            coverage,
            plan=plan,
            explanation=plan.explanation,
        )
    if coverage is not None and coverage.verdict == "unsupported":
        bad = ", ".join(o.op for o in coverage.by_status("unsupported"))
        return Adaptation(
            model.name, chip.name, model.kind, "unsupported", f"cannot run {bad}", coverage
        )
    precisions, lines, why_not = precision_choices(chip, req, runtime)
    if why_not is not None:
        return Adaptation(
            model.name,
            chip.name,
            model.kind,
            "unsupported",
            why_not,
            coverage,
            explanation=(*lines, why_not),
        )
    dense, more = plan_dense(model, chip, precisions, req, coverage, req.slo.latency_ms)
    lines += more
    if dense is None:
        return Adaptation(
            model.name,
            chip.name,
            model.kind,
            "does_not_fit",
            lines[-1],
            coverage,
            explanation=tuple(lines),
        )
    sup = {} if coverage is None else coverage.supplemented_ops()
    if sup:
        verdict: Verdict = "runs_with_supplementation"
        reason = "runs with " + ", ".join(f"{op} ({m})" for op, m in sorted(sup.items()))
    else:
        verdict, reason = "runs_natively", ""
    return Adaptation(
        model.name,
        chip.name,
        model.kind,
        verdict,
        reason,
        coverage,
        dense=dense,
        explanation=tuple(lines),
        passes=tuple(_dense_passes(model, chip, req, coverage, dense, catalog)),
    )


def _dense_passes(
    model: Model,
    chip: Chip,
    req: PlanRequest,
    coverage: Coverage | None,
    best: DensePlan,
    catalog: Catalog,
) -> list[PassResult]:
    """A catalogue model without a graph: int8 priced on the roofline, fusion not modelled."""
    out = [
        PassResult(
            "operator_fusion",
            False,
            None,
            "no graph here for a catalogue model (its roofline already prices fused kernels);"
            " import its ONNX export for a modelled and a measured figure",
        )
    ]
    if "int8" not in supported_precisions(chip, catalog.precisions(chip)):
        out.append(PassResult("int8_ptq", False, None, f"{chip.name} has no priced int8"))
    elif best.precision == "int8":
        out.append(
            PassResult(
                "int8_ptq", True, None, "int8 is the plan's precision (asked for or the only one)"
            )
        )
    else:
        q, _ = plan_dense(model, chip, ["int8"], req, coverage, req.slo.latency_ms)
        gain = None if q is None else q.samples_per_s / best.samples_per_s
        out.append(
            PassResult(
                "int8_ptq",
                False,
                gain,
                (f"int8 weights would give x{gain:.2f} samples/s" if gain else "no int8 batch")
                + "; not applied: lossy, and without the weights its accuracy cannot be measured"
                " here (import the ONNX graph to measure it)",
            )
        )
    return out + not_llm_passes()


def matrix(catalog: Catalog, req: PlanRequest | None = None) -> list[Adaptation]:
    """Every catalogue model x every emulatable chip."""
    r = PlanRequest() if req is None else req
    chips = [c for c in catalog.chips if c.emulatable]
    return [adapt(catalog, m, c, r) for m in catalog.models for c in chips]


def _input_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    """Static shapes for the graph inputs: the leading symbolic dim is the batch, others 1."""
    inits = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = []
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value) if i else int(d.dim_value) * batch)
            else:
                dims.append(batch if i == 0 else 1)
        shapes[vi.name] = dims
    return shapes


def adapt_onnx(
    catalog: Catalog, name: str, model: onnx.ModelProto, chip: Chip, req: PlanRequest
) -> Adaptation:
    """An imported ONNX graph on ``chip``: node-by-node coverage, supplementation, the graph's
    cost on the performance model at the best batch under the latency bound."""
    gaps = {op: g.reason for op, g in catalog.operator_gaps(chip).items()}
    coverage, supplemented = graph_coverage(
        name, chip.name, model, catalog.native_operators(chip), gaps
    )
    if coverage.verdict == "unsupported":
        bad = ", ".join(o.op for o in coverage.by_status("unsupported"))
        return Adaptation(name, chip.name, "onnx", "unsupported", f"cannot run {bad}", coverage)
    precisions, lines, why_not = precision_choices(chip, req, catalog.precisions(chip))
    if why_not is not None:
        return Adaptation(
            name, chip.name, "onnx", "unsupported", why_not, coverage, explanation=(*lines, why_not)
        )
    link = host_link(chip)
    best: DensePlan | None = None
    latency = req.slo.latency_ms
    try:
        for p in precisions:
            for batch in (1, 2, 4, 8, 16, 32, 64):
                cost = graph_cost(supplemented.model, _input_shapes(model, batch), chip, p)
                t = cost.seconds
                host_bytes = supplemented.host_transfer_bytes
                if supplemented.host:
                    per_node = (host_bytes or 0) * batch
                    t += link.fallback_seconds(per_node, 2 * len(supplemented.host))
                if latency is not None and t * 1e3 > latency:
                    break
                cand = DensePlan(p, batch, batch / t, t * 1e3)
                if best is None or cand.samples_per_s > best.samples_per_s * 1.02:
                    best = cand
    except (ValueError, KeyError) as exc:
        reason = f"the graph cannot be priced: {exc}"
        return Adaptation(
            name, chip.name, "onnx", "unsupported", reason, coverage, explanation=(*lines, reason)
        )
    if supplemented.host:
        lines.append(
            f"{len(supplemented.host)} node(s) on the host CPU: "
            + ", ".join(sorted({h.op_type for h in supplemented.host}))
            + f"; transfers over the host link ({link.basis})"
        )
    if supplemented.rewritten:
        lines.append(
            "rewritten into primitives: "
            + ", ".join(f"{op} x{n}" for op, n in sorted(supplemented.rewritten.items()))
        )
    if best is None:
        reason = f"no batch of 1 finishes within {latency} ms"
        return Adaptation(
            name, chip.name, "onnx", "does_not_fit", reason, coverage, explanation=(*lines, reason)
        )
    lines.append(
        f"batch {best.batch} at {best.precision}: {best.samples_per_s:.0f} samples/s,"
        f" {best.latency_ms:.2f} ms per batch (graph cost on the performance model)"
    )
    passes, best = _onnx_passes(model, supplemented.model, chip, req, best, lines, catalog)
    sup = coverage.supplemented_ops()
    verdict: Verdict = "runs_with_supplementation" if sup else "runs_natively"
    reason = ", ".join(f"{op} ({m})" for op, m in sorted(sup.items()))
    return Adaptation(
        name,
        chip.name,
        "onnx",
        verdict,
        f"runs with {reason}" if reason else "",
        coverage,
        dense=best,
        explanation=tuple(lines),
        passes=tuple(passes),
    )


#: Largest measured int8 output error (relative to the output's range) a plan accepts.
MAX_INT8_DELTA: Final = 0.05


def _onnx_passes(
    model: onnx.ModelProto,
    runnable: onnx.ModelProto,
    chip: Chip,
    req: PlanRequest,
    best: DensePlan,
    lines: list[str],
    catalog: Catalog,
) -> tuple[list[PassResult], DensePlan]:
    out: list[PassResult] = []
    fusion = measure_fusion(model)
    shapes = _input_shapes(model, best.batch)
    fused_s = graph_cost(runnable, shapes, chip, best.precision).seconds
    unfused_s = graph_cost(runnable, shapes, chip, best.precision, fuse=False).seconds
    out.append(
        PassResult(
            "operator_fusion",
            True,
            unfused_s / fused_s,
            f"modelled on {chip.name}: elementwise chains fused into their producing kernel,"
            f" {unfused_s * 1e3:.3f} ms unfused vs {fused_s * 1e3:.3f} ms per batch of"
            f" {best.batch}; measured on this CPU with onnxruntime: {fusion.unfused_ms:.3f} ms"
            f" unoptimized vs {fusion.fused_ms:.3f} ms with every graph optimization"
            f" (x{fusion.speedup:.2f})",
            measured=True,
            measured_gain=fusion.speedup,
            assumption="the graph cost model's fusion rule (elementwise ops join their"
            " single-consumer producer, as vendor graph compilers do)",
        )
    )
    if "int8" not in supported_precisions(chip, catalog.precisions(chip)):
        out.append(PassResult("int8_ptq", False, None, f"{chip.name} has no priced int8"))
    else:
        q = measure_int8(model)
        int8_s = graph_cost(runnable, shapes, chip, "int8").seconds
        base_s = graph_cost(runnable, shapes, chip, best.precision).seconds
        gain = base_s / int8_s
        delta = q.max_relative_error
        measured = (
            f"measured on seeded random inputs: max output error {delta:.2%} of the output range,"
            f" arg-max agreement {q.argmax_agreement:.0%}; modelled gain x{gain:.2f}"
        )
        allowed = req.allow_quantized or req.precision == "int8"
        apply = allowed and delta <= MAX_INT8_DELTA and gain > 1.02
        if apply:
            t = best.latency_ms / gain
            best = DensePlan("int8", best.batch, best.batch / (t / 1e3), t)
            lines.append(f"int8 post-training quantization applied: {measured}")
        why = (
            measured
            if apply
            else measured
            + (
                "; not applied: lossy, needs --allow-quantized"
                if not allowed
                else f"; not applied: error above {MAX_INT8_DELTA:.0%} or no gain"
            )
        )
        out.append(PassResult("int8_ptq", apply, gain, why, measured=True, accuracy_delta=delta))
    out += not_llm_passes()
    return out, best


def not_llm_passes() -> list[PassResult]:
    """The LLM-only passes, for a model that is not a decoder LLM (every pass is reported)."""
    why = "not a decoder LLM: no KV cache and no autoregressive decode"
    return [
        PassResult(name, False, None, why)
        for name in (
            "kv_cache_quantized",
            "speculative_decoding_mtp",
            "speculative_decoding",
            "prefix_caching",
        )
    ]
