"""An agent's side of the unified communication library: collectives on its vendor runtime.

:class:`AgentCollectives` binds a :class:`pocgrid.comm.Communicator` to the agent's emulated
``VendorRuntime``. Each collective first charges its buffer to every device's memory with the
vendor's allocation rules (so a collective that does not fit fails with the vendor's own
out-of-memory error, and the peers hear that reason through the communicator's abort instead
of timing out), then moves the data, then queues the collective's virtual time on every
device's default stream under the vendor library's name (``HCCL all_reduce``, ...), and frees
the buffers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from pocgrid.comm import CollectiveResult, Communicator, NetworkConfig, ReduceOp
from pocgrid.comm.communicator import DEFAULT_TIMEOUT_S
from pocgrid.comm.errors import CommInputError
from pocgrid.comm.transport import UniqueId
from services.agent.runtime import Allocation, VendorRuntime, VendorRuntimeError


class AgentCollectives:
    """Collectives of one agent (all its devices) with every other agent of a communicator."""

    def __init__(self, runtime: VendorRuntime, comm: Communicator) -> None:
        info = comm.topology.ranks[comm.rank]
        if info.chip != runtime.chip.name or info.devices != runtime.device_count:
            raise CommInputError(
                "comm",
                f"joined as {info.chip} x{info.devices}, but this agent runs "
                f"{runtime.chip.name} x{runtime.device_count}",
            )
        self.runtime = runtime
        self.comm = comm

    @classmethod
    def join(
        cls,
        runtime: VendorRuntime,
        uid: UniqueId | str,
        nranks: int,
        rank: int,
        *,
        node: str = "",
        network: NetworkConfig | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> AgentCollectives:
        comm = Communicator.init_rank(
            uid,
            nranks,
            rank,
            chip=runtime.chip.name,
            devices=runtime.device_count,
            node=node,
            network=network,
            timeout_s=timeout_s,
        )
        return cls(runtime, comm)

    @property
    def library(self) -> str:
        """The vendor library that runs inside this agent (from the vendor profile)."""
        return self.runtime.collective_library

    def all_reduce(self, x: npt.ArrayLike, op: ReduceOp = "sum") -> CollectiveResult:
        arr = np.ascontiguousarray(x)
        return self._run("all_reduce", arr.nbytes, lambda: self.comm.all_reduce(arr, op))

    def all_gather(self, x: npt.ArrayLike) -> CollectiveResult:
        arr = np.ascontiguousarray(x)
        return self._run(
            "all_gather", arr.nbytes * self.comm.size, lambda: self.comm.all_gather(arr)
        )

    def reduce_scatter(self, x: npt.ArrayLike, op: ReduceOp = "sum") -> CollectiveResult:
        arr = np.ascontiguousarray(x)
        return self._run("reduce_scatter", arr.nbytes, lambda: self.comm.reduce_scatter(arr, op))

    def broadcast(self, x: npt.ArrayLike, root: int = 0) -> CollectiveResult:
        arr = np.ascontiguousarray(x)
        return self._run("broadcast", arr.nbytes, lambda: self.comm.broadcast(arr, root))

    def close(self) -> None:
        self.comm.close()

    def __enter__(self) -> AgentCollectives:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(
        self, kind: str, nbytes: int, call: Callable[[], CollectiveResult]
    ) -> CollectiveResult:
        held: list[Allocation] = []
        try:
            try:
                for device in range(self.runtime.device_count):
                    held.append(self.runtime.malloc(device, max(1, nbytes), tag=f"comm {kind}"))
            except VendorRuntimeError as exc:
                # Tell the peers why this rank will not take part, so they fail fast.
                self.comm.abort(f"{self.library} {kind}: {exc}")
                raise
            result = call()
            for stream in self.runtime.streams.values():
                stream.submit(result.virtual_s, f"{self.library} {kind} ({result.algorithm})")
            return result
        finally:
            for allocation in held:
                self.runtime.free(allocation)
