"""Alpha-beta cost of the collectives a vendor library runs between the devices of one node.

The tensor-parallel all-reduce of the LLM cost model (:mod:`pocgrid.perf.llm`) and the unified
communication library (:mod:`pocgrid.comm`) both price a node's native collective here, so a
collective inside one agent costs the same in a serving prediction and in a training step.

A ring over ``ranks`` devices moves ``bus_factor(kind, ranks)`` times the message through each
device's link (all-reduce: 2(p-1)/p; reduce-scatter and all-gather: (p-1)/p; broadcast: 1),
at the chip's achieved per-direction link rate. The fixed term is the calibrated
``collective_latency_s`` once per collective: the TensorRT-LLM rows it was fitted on run one
NCCL kernel per all-reduce, whose latency does not grow step by step like a host-driven ring.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

CollectiveKind: TypeAlias = Literal["all_reduce", "reduce_scatter", "all_gather", "broadcast"]
COLLECTIVE_KINDS: Final[tuple[CollectiveKind, ...]] = (
    "all_reduce",
    "reduce_scatter",
    "all_gather",
    "broadcast",
)


def bus_factor(kind: CollectiveKind, ranks: int) -> float:
    """Bytes through each rank's link per byte of message, for a ring over ``ranks``."""
    if ranks < 1:
        raise ValueError(f"ranks: must be >= 1, got {ranks}")
    if ranks == 1:
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (ranks - 1) / ranks
    if kind in ("reduce_scatter", "all_gather"):
        return (ranks - 1) / ranks
    return 1.0


def native_collective_seconds(
    kind: CollectiveKind,
    ranks: int,
    message_bytes: float,
    *,
    link_bytes_per_s: float,
    latency_s: float,
) -> float:
    """Seconds one collective over ``ranks`` devices of a node takes (0 for one device)."""
    if ranks <= 1:
        return 0.0
    return latency_s + bus_factor(kind, ranks) * message_bytes / link_bytes_per_s
