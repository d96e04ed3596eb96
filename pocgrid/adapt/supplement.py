"""Supplement a model for a runtime: rewrite what it lacks, or run that on the host.

For each node whose operator the runtime does not have natively: if the registry has a rewrite
that handles the node and every operator the rewrite emits is native (or can itself be
rewritten), the node is replaced by its expansion; otherwise the node stays as it is and is
marked to run on the host CPU, which costs a transfer of its inputs and outputs over the chip's
host link (see :mod:`pocgrid.adapt.hostlink`). Nested graphs (If/Loop/Scan bodies) are
supplemented the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import onnx

from pocgrid.adapt.graph import ValueType, graphs, opset_version, tensor_bytes, value_types
from pocgrid.adapt.rewrites import REWRITES, Rewrite

#: How deep a rewrite's own output may be rewritten again (a primitive the runtime lacks).
MAX_REWRITE_DEPTH = 3


@dataclass(frozen=True, slots=True)
class HostNode:
    """A node that runs on the host CPU instead of the chip."""

    op_type: str
    node: str
    reason: str
    transfer_bytes: int | None
    """Inputs to the host plus outputs back to the device; None when a shape is dynamic."""


@dataclass(frozen=True, slots=True)
class Supplemented:
    model: onnx.ModelProto
    """The rewritten model: rewritten nodes replaced, host nodes kept in place."""
    rewritten: Mapping[str, int]
    """Operator -> how many of its nodes were rewritten."""
    host: tuple[HostNode, ...]
    native: Mapping[str, int] = field(default_factory=dict)
    """Operator -> how many nodes run natively (after rewriting)."""

    @property
    def host_ops(self) -> dict[str, int]:
        return dict(Counter(h.op_type for h in self.host))

    @property
    def host_transfer_bytes(self) -> int | None:
        total = 0
        for h in self.host:
            if h.transfer_bytes is None:
                return None
            total += h.transfer_bytes
        return total


def _expand(
    node: onnx.NodeProto,
    native: Collection[str],
    registry: Mapping[str, Rewrite],
    opset: int,
    types: Mapping[str, ValueType],
    prefix: str,
    depth: int,
) -> tuple[list[onnx.NodeProto] | None, str]:
    """Native-only nodes computing ``node``, or None and why not."""
    rewrite = registry.get(node.op_type)
    if rewrite is None:
        return None, f"no rewrite of {node.op_type} in the registry"
    expanded = rewrite.apply(node, opset, types, prefix)
    if expanded is None:
        return None, (
            f"the {node.op_type} rewrite does not handle this node (opset {opset}, its"
            " attributes, optional inputs/outputs, or an unknown rank)"
        )
    out: list[onnx.NodeProto] = []
    for i, sub in enumerate(expanded):
        if sub.op_type in native:
            out.append(sub)
            continue
        if depth >= MAX_REWRITE_DEPTH:
            return None, f"the {node.op_type} rewrite needs {sub.op_type}, which is not native"
        inner, why = _expand(sub, native, registry, opset, types, f"{prefix}/{i}", depth + 1)
        if inner is None:
            return None, f"the {node.op_type} rewrite needs {sub.op_type}: {why}"
        out.extend(inner)
    return out, ""


def _transfer_bytes(node: onnx.NodeProto, types: Mapping[str, ValueType]) -> int | None:
    total = 0
    for name in (*node.input, *node.output):
        if not name:
            continue
        b = tensor_bytes(types.get(name))
        if b is None:
            return None
        total += b
    return total


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    # A copy, so clearing the graph's repeated field cannot touch what we keep.
    kept = onnx.NodeProto()
    kept.CopyFrom(node)
    return kept


def supplement(
    model: onnx.ModelProto,
    native: Collection[str],
    registry: Mapping[str, Rewrite] = REWRITES,
) -> Supplemented:
    """``model`` made runnable on a runtime whose native operators are ``native``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = opset_version(out)
    types = value_types(out)
    rewritten: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    host: list[HostNode] = []
    for gi, g in enumerate(graphs(out.graph)):
        new_nodes: list[onnx.NodeProto] = []
        for ni, node in enumerate(g.node):
            if node.op_type in native and node.domain in ("", "ai.onnx"):
                new_nodes.append(_copy(node))
                kept[node.op_type] += 1
                continue
            prefix = f"supplement/{gi}/{ni}/{node.op_type}"
            expanded, why = _expand(node, native, registry, opset, types, prefix, 0)
            if expanded is None:
                host.append(
                    HostNode(node.op_type, node.name or prefix, why, _transfer_bytes(node, types))
                )
                new_nodes.append(_copy(node))
                continue
            rewritten[node.op_type] += 1
            for sub in expanded:
                kept[sub.op_type] += 1
            new_nodes.extend(expanded)
        # Replacing in place keeps nested graphs (already yielded, still referenced) intact.
        del g.node[:]
        g.node.extend(new_nodes)
    return Supplemented(out, dict(rewritten), tuple(host), dict(kept))
