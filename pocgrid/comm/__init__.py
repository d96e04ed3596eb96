"""Unified communication library: one NCCL-shaped API over every vendor's collectives.

Ranks are agents of any chip type. Between agents real numpy data moves over TCP
(:mod:`pocgrid.comm.transport`); inside an agent the vendor's collective library (HCCL, CNCL,
RCCL, XCCL, MCCL, IXCCL, NCCL, ...) is emulated and priced by the performance model. Ring,
tree and hierarchical algorithms (:mod:`pocgrid.comm.plans`) are chosen per call by the
alpha-beta model over the links involved (:mod:`pocgrid.comm.topology`); every result says
which one ran and its virtual time. See docs/comm.md.
"""

from pocgrid.comm.communicator import (
    REDUCE_OPS,
    CollectiveResult,
    Communicator,
    ReduceOp,
)
from pocgrid.comm.errors import (
    CommAbortedError,
    CommError,
    CommInputError,
    CommProtocolError,
    CommTimeoutError,
    PeerLostError,
)
from pocgrid.comm.plans import Choice, Plan, choose
from pocgrid.comm.topology import LinkSpec, NetworkConfig, RankInfo, Topology, library_name
from pocgrid.comm.transport import UniqueId, get_unique_id

__all__ = [
    "REDUCE_OPS",
    "Choice",
    "CollectiveResult",
    "CommAbortedError",
    "CommError",
    "CommInputError",
    "CommProtocolError",
    "CommTimeoutError",
    "Communicator",
    "LinkSpec",
    "NetworkConfig",
    "PeerLostError",
    "Plan",
    "RankInfo",
    "ReduceOp",
    "Topology",
    "UniqueId",
    "choose",
    "get_unique_id",
    "library_name",
]
