"""Operator coverage of a model on a chip: per operator native, supplemented or unsupported.

*native*: the vendor runtime runs it. *supplemented*: it does not, but a registry rewrite turns
it into operators it does run, or it runs on the host CPU (onnxruntime's CPU provider) at the
cost of a round trip over the host link. *unsupported*: neither works, so the model cannot run:
an operator outside the ONNX standard domains has no host kernel either.

For an imported ONNX graph, coverage is decided node by node by actually supplementing the
graph (a rewrite may handle one node of an operator and decline another); for a catalogue model
it is read from the model's export signature (:mod:`pocgrid.adapt.signatures`), assuming the
standard attributes the rewrites handle.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import onnx

from pocgrid.adapt.graph import graphs
from pocgrid.adapt.rewrites import REWRITES, Rewrite
from pocgrid.adapt.supplement import Supplemented, supplement

Status = Literal["native", "supplemented", "unsupported"]
Method = Literal["native", "rewrite", "host", "none"]

#: Domains whose operators onnxruntime's CPU provider can run on the host.
HOST_DOMAINS: Final = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True, slots=True)
class OpCoverage:
    op: str
    count: int
    status: Status
    method: Method
    detail: str
    """How it is supplemented (the rewrite, or why it runs on the host), or why it cannot run."""
    gap: str = ""
    """Why the runtime lacks it natively, from the catalogue's operator sets."""

    def to_dict(self) -> dict[str, object]:
        return {
            "op": self.op,
            "count": self.count,
            "status": self.status,
            "method": self.method,
            "detail": self.detail,
            "gap": self.gap,
        }


@dataclass(frozen=True, slots=True)
class Coverage:
    model: str
    chip: str
    ops: tuple[OpCoverage, ...]
    basis: str
    """Where the operator list came from (the imported graph, or the export signature)."""

    def by_status(self, status: Status) -> list[OpCoverage]:
        return [o for o in self.ops if o.status == status]

    @property
    def verdict(self) -> Status:
        if self.by_status("unsupported"):
            return "unsupported"
        if self.by_status("supplemented"):
            return "supplemented"
        return "native"

    def supplemented_ops(self) -> dict[str, Method]:
        return {o.op: o.method for o in self.ops if o.status == "supplemented"}

    def summary(self) -> str:
        parts = []
        statuses: tuple[Status, ...] = ("supplemented", "unsupported")
        for status in statuses:
            ops = self.by_status(status)
            if ops:
                parts.append(f"{status}: " + ", ".join(f"{o.op} ({o.method})" for o in ops))
        native = len(self.by_status("native"))
        head = f"{native}/{len(self.ops)} operator types native"
        return "; ".join([head, *parts])

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "chip": self.chip,
            "verdict": self.verdict,
            "basis": self.basis,
            "ops": [o.to_dict() for o in self.ops],
        }


def _signature_op(
    op: str,
    count: int,
    native: Collection[str],
    gaps: Mapping[str, str],
    registry: Mapping[str, Rewrite],
) -> OpCoverage:
    if op in native:
        return OpCoverage(op, count, "native", "native", "")
    gap = gaps.get(op, "not in the runtime's operator set")
    rewrite = registry.get(op)
    if rewrite is not None and rewrite.uses <= set(native):
        return OpCoverage(op, count, "supplemented", "rewrite", rewrite.summary, gap)
    if rewrite is not None:
        lacking = sorted(rewrite.uses - set(native))
        why = f"its rewrite needs {', '.join(lacking)}, which the runtime lacks; runs on the host"
    else:
        why = "no rewrite in the registry; runs on the host CPU"
    return OpCoverage(op, count, "supplemented", "host", why, gap)


def signature_coverage(
    model: str,
    chip: str,
    ops: Mapping[str, int],
    native: Collection[str],
    gaps: Mapping[str, str],
    *,
    basis: str = "export signature",
    registry: Mapping[str, Rewrite] = REWRITES,
) -> Coverage:
    """Coverage of an operator list (standard-domain operators) on a runtime."""
    return Coverage(
        model,
        chip,
        tuple(_signature_op(op, n, native, gaps, registry) for op, n in sorted(ops.items())),
        basis,
    )


def graph_coverage(
    model_name: str,
    chip: str,
    model: onnx.ModelProto,
    native: Collection[str],
    gaps: Mapping[str, str],
    *,
    registry: Mapping[str, Rewrite] = REWRITES,
) -> tuple[Coverage, Supplemented]:
    """Coverage of an ONNX graph, node by node, with the supplemented graph itself."""
    domains: dict[str, str] = {}
    counts: dict[str, int] = {}
    for g in graphs(model.graph):
        for node in g.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            domains.setdefault(node.op_type, node.domain)
    result = supplement(model, native, registry)
    host_reasons: dict[str, str] = {}
    for h in result.host:
        host_reasons.setdefault(h.op_type, h.reason)
    ops: list[OpCoverage] = []
    for op, n in sorted(counts.items()):
        domain = domains[op]
        gap = gaps.get(op, "not in the runtime's operator set")
        if op in native and domain in ("", "ai.onnx"):
            ops.append(OpCoverage(op, n, "native", "native", ""))
        elif op in host_reasons and domain not in HOST_DOMAINS:
            ops.append(
                OpCoverage(
                    op,
                    n,
                    "unsupported",
                    "none",
                    f"operator of domain '{domain}': no rewrite and no host kernel",
                    gap,
                )
            )
        elif op in host_reasons:
            rewritten = result.rewritten.get(op, 0)
            detail = host_reasons[op] + "; runs on the host CPU"
            if rewritten:
                detail = f"{rewritten} of {n} nodes rewritten; the others: {detail}"
            ops.append(OpCoverage(op, n, "supplemented", "host", detail, gap))
        else:
            ops.append(OpCoverage(op, n, "supplemented", "rewrite", registry[op].summary, gap))
    return Coverage(model_name, chip, tuple(ops), "imported ONNX graph"), result
