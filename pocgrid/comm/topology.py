"""Who the ranks are and what links join them: the alpha-beta parameters of every pair.

A rank is one agent: ``devices`` devices of one chip type on one node. Three kinds of link:

- ``native-node``: two ranks of one vendor family on the same node talk over the chip's own
  interconnect (HCCS, MLU-Link, NVLink, ...) at the rate the performance model uses for
  tensor parallelism (catalogue bandwidth x link efficiency, per direction);
- ``native-net``: two ranks of one vendor family on different nodes: the vendor library over
  the scale-out network (RDMA), :attr:`NetworkConfig.network_gbs`;
- ``bridge``: ranks of different vendor families: no vendor library speaks both, so data
  crosses through host memory and the host network (FlagCX's host path),
  :attr:`NetworkConfig.bridge_gbs`.

Inside one rank the vendor library runs across its devices; that native collective is priced
by :func:`pocgrid.perf.collective.native_collective_seconds`, the same function the LLM cost
model uses for its tensor-parallel all-reduce.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final

from pocgrid.catalog import Catalog, Chip, UnknownNameError, default_catalog
from pocgrid.comm.errors import CommInputError
from pocgrid.perf.collective import CollectiveKind, native_collective_seconds
from pocgrid.perf.efficiency import GIGA, EfficiencyData, default_efficiency

LINK_KINDS: Final = ("native-node", "native-net", "bridge")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """The network between nodes, which the catalogue does not describe (all estimates)."""

    network_gbs: float = 25.0
    """Achieved GB/s per direction of the vendor library between nodes over RDMA: a 200 Gb/s
    RoCE/InfiniBand NIC per node (estimated; configurable)."""
    network_latency_s: float = 10e-6
    """Seconds per message between nodes over RDMA, library step included (estimated)."""
    bridge_gbs: float = 10.0
    """Achieved GB/s per direction across vendor families: device-to-host copies and TCP over
    a 100 Gb/s host network (estimated; configurable)."""
    bridge_latency_s: float = 40e-6
    """Seconds per message on the host path (staging copies, kernel TCP stack; estimated)."""
    node_latency_s: float = 5e-6
    """Seconds per message between ranks on one node over the chip interconnect (estimated)."""

    def __post_init__(self) -> None:
        for name in ("network_gbs", "bridge_gbs"):
            if not getattr(self, name) > 0:
                raise CommInputError(name, "must be > 0")
        for name in ("network_latency_s", "bridge_latency_s", "node_latency_s"):
            if not getattr(self, name) >= 0:
                raise CommInputError(name, "must be >= 0")


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of one pair of ranks: alpha (latency) and beta (1 / bytes per second)."""

    kind: str
    latency_s: float
    bytes_per_s: float

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


@dataclass(frozen=True, slots=True)
class RankInfo:
    """What a rank tells the others when it joins."""

    rank: int
    chip: str
    """Catalogue slug of the agent's chip."""
    devices: int = 1
    """Devices of the agent taking part (the vendor library spans them inside the agent)."""
    node: str = ""
    """Node name; ranks with the same non-empty node and vendor family share the chip's
    interconnect. Empty: a node of its own."""
    pid: int = 0

    def to_registration(self) -> dict[str, object]:
        return {"chip": self.chip, "devices": self.devices, "node": self.node}

    @classmethod
    def from_registration(cls, rank: int, entry: Mapping[str, object]) -> RankInfo:
        devices = entry.get("devices", 1)
        pid = entry.get("pid", 0)
        return cls(
            rank=rank,
            chip=str(entry.get("chip", "")),
            devices=devices if isinstance(devices, int) else 1,
            node=str(entry.get("node", "") or ""),
            pid=pid if isinstance(pid, int) else 0,
        )


def library_name(chip: Chip) -> str:
    """Short name of the chip's collective library (``HCCL``, ``CNCL``, ...) from the catalogue."""
    text = chip.collective_library
    if not text:
        return f"{chip.vendor_family}-host"
    return re.split(r" \(| / | - ", text, maxsplit=1)[0].strip()


class Topology:
    """The ranks of one communicator, their chips and every link between them."""

    def __init__(
        self,
        ranks: Sequence[RankInfo],
        network: NetworkConfig | None = None,
        *,
        catalog: Catalog | None = None,
        efficiency: EfficiencyData | None = None,
    ) -> None:
        if not ranks:
            raise CommInputError("ranks", "must not be empty")
        self.ranks = tuple(ranks)
        self.network = NetworkConfig() if network is None else network
        cat = default_catalog() if catalog is None else catalog
        eff = default_efficiency() if efficiency is None else efficiency
        self.params = eff.params
        chips: list[Chip] = []
        for info in self.ranks:
            try:
                chips.append(cat.chip(info.chip))
            except UnknownNameError:
                raise CommInputError(
                    "chip", f"rank {info.rank}: unknown chip {info.chip!r}"
                ) from None
            if info.devices < 1:
                raise CommInputError("devices", f"rank {info.rank}: must be >= 1")
        self.chips = tuple(chips)
        self._link_rate = tuple(eff.link_ceiling(c, self.params).rate for c in chips)

    @property
    def size(self) -> int:
        return len(self.ranks)

    def family(self, rank: int) -> str:
        return self.chips[rank].vendor_family

    def library(self, rank: int) -> str:
        return library_name(self.chips[rank])

    def describe(self, rank: int) -> str:
        info = self.ranks[rank]
        pid = f", pid {info.pid}" if info.pid else ""
        return f"rank {rank} ({info.chip} x{info.devices}, {self.library(rank)}{pid})"

    def link(self, src: int, dst: int) -> LinkSpec:
        a, b = self.ranks[src], self.ranks[dst]
        net = self.network
        if self.family(src) != self.family(dst):
            return LinkSpec("bridge", net.bridge_latency_s, net.bridge_gbs * GIGA)
        if a.node and a.node == b.node:
            rate = min(self._link_rate[src], self._link_rate[dst])
            return LinkSpec("native-node", net.node_latency_s, rate)
        return LinkSpec("native-net", net.network_latency_s, net.network_gbs * GIGA)

    @cached_property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Ranks by vendor family, in order of each family's first rank (leader first)."""
        order: dict[str, list[int]] = {}
        for r in range(self.size):
            order.setdefault(self.family(r), []).append(r)
        return tuple(tuple(g) for g in order.values())

    @property
    def heterogeneous(self) -> bool:
        return len(self.groups) > 1

    def intra_rank_seconds(self, kind: CollectiveKind, rank: int, nbytes: float) -> float:
        """The vendor library's collective across the devices of one rank (perf model's formula)."""
        return native_collective_seconds(
            kind,
            self.ranks[rank].devices,
            nbytes,
            link_bytes_per_s=self._link_rate[rank],
            latency_s=self.params.collective_latency_s,
        )
