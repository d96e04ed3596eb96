"""Adapt a catalogue model to a chip: coverage, supplementation, the best plan, the matrix.

The entry points the CLI, the adapter service and the benchmark call. Everything here reads the
catalogue (chips, models, per-chip operator sets and runtime precisions) and prices through the
one performance model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pocgrid.adapt.coverage import Coverage, signature_coverage
from pocgrid.adapt.dense_plan import DensePlan, plan_dense
from pocgrid.adapt.plan import Plan, PlanRequest, Verdict, plan_llm, precision_choices
from pocgrid.adapt.signatures import operator_signature
from pocgrid.catalog import Catalog, Chip, Model

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
            "replicas": p.replicas if p else (1 if d else None),
            "passes": passes,
            "output_tokens_per_s": None if p is None else p.output_tokens_per_s,
            "reason": self.reason,
            "kind": self.kind,
            "samples_per_s": None if d is None else d.samples_per_s,
            "max_num_seqs": None if p is None else p.max_num_seqs,
            "batch": None if d is None else d.batch,
            "explanation": list(self.explanation),
        }

    def to_dict(self) -> dict[str, object]:
        out = self.cell()
        out["coverage"] = None if self.coverage is None else self.coverage.to_dict()
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        if self.dense is not None:
            out["dense_plan"] = self.dense.to_dict()
        return out


def adapt(catalog: Catalog, model: Model, chip: Chip, req: PlanRequest) -> Adaptation:
    coverage = chip_coverage(catalog, model, chip)
    runtime = catalog.precisions(chip)
    if model.arch is not None:
        plan = plan_llm(model, chip, req, coverage, runtime)
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
    )


def matrix(catalog: Catalog, req: PlanRequest | None = None) -> list[Adaptation]:
    """Every catalogue model x every emulatable chip."""
    r = PlanRequest() if req is None else req
    chips = [c for c in catalog.chips if c.emulatable]
    return [adapt(catalog, m, c, r) for m in catalog.models for c in chips]
