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

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from pocgrid.comm import CollectiveResult, Communicator, NetworkConfig, ReduceOp, Topology
from pocgrid.comm.communicator import DEFAULT_TIMEOUT_S
from pocgrid.comm.errors import CommInputError
from pocgrid.comm.transport import UniqueId
from services.agent.runtime import Allocation, VendorRuntime, VendorRuntimeError

T = TypeVar("T")


class Owner(Protocol):
    """Runs a runtime operation where the runtime may be touched, and returns its value."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


class AgentCollectives:
    """Collectives of one agent (its devices ``devices``, all of them by default) with every
    other agent of a communicator."""

    def __init__(
        self,
        runtime: VendorRuntime,
        comm: Communicator,
        devices: Sequence[int] = (),
        owner: Owner | None = None,
    ) -> None:
        self._owner: Owner = owner or _here
        """Where runtime operations run (``OwnerThread`` in an agent)."""
        self.devices = tuple(devices) or tuple(range(runtime.device_count))
        info = comm.topology.ranks[comm.rank]
        if info.chip != runtime.chip.name or info.devices != len(self.devices):
            raise CommInputError(
                "comm",
                f"joined as {info.chip} x{info.devices}, but this agent runs "
                f"{runtime.chip.name} x{len(self.devices)}",
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
        devices: Sequence[int] = (),
        host: str = "127.0.0.1",
        owner: Owner | None = None,
    ) -> AgentCollectives:
        """Join as ``rank`` with ``devices`` (default all); ``host`` is where this rank listens
        for its peers (the agent's advertised host when the peers are other machines)."""
        chosen = tuple(devices) or tuple(range(runtime.device_count))
        comm = Communicator.init_rank(
            uid,
            nranks,
            rank,
            chip=runtime.chip.name,
            devices=len(chosen),
            node=node,
            network=network,
            timeout_s=timeout_s,
            host=host,
        )
        try:
            return cls(runtime, comm, chosen, owner)
        except BaseException:
            comm.close()
            raise

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def topology(self) -> Topology:
        return self.comm.topology

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

    def occupy(self, seconds: float, label: str) -> float:
        """Queue ``seconds`` of this rank's own work (e.g. a training step's compute) on every
        device's stream; returns when the last device finishes, on the virtual clock."""

        return self._owner(lambda: self._queue(seconds, label))

    def close(self) -> None:
        self.comm.close()

    def __enter__(self) -> AgentCollectives:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(
        self, kind: str, nbytes: int, call: Callable[[], CollectiveResult]
    ) -> CollectiveResult:
        try:
            held = self._owner(lambda: self._hold(kind, nbytes))
        except VendorRuntimeError as exc:
            # Tell the peers why this rank will not take part, so they fail fast.
            self.comm.abort(f"{self.library} {kind}: {exc}")
            raise
        try:
            result = call()
            label = f"{self.library} {kind} ({result.algorithm})"
            self._owner(lambda: self._queue(result.virtual_s, label))
            return result
        finally:
            self._owner(lambda: self._free(held))

    def _queue(self, seconds: float, label: str) -> float:
        return max(self.runtime.streams[d].submit(seconds, label) for d in self.devices)

    def _free(self, held: Sequence[Allocation]) -> None:
        for allocation in held:
            self.runtime.free(allocation)

    def _hold(self, kind: str, nbytes: int) -> list[Allocation]:
        """The buffer on every device, or none of them (the vendor's error)."""
        held: list[Allocation] = []
        try:
            for device in self.devices:
                held.append(self.runtime.malloc(device, max(1, nbytes), tag=f"comm {kind}"))
        except BaseException:
            self._free(held)
            raise
        return held


class OwnerThread:
    """Runs a runtime operation in the thread that owns the runtime: an agent's runtime is the
    event loop's (its RPCs change it there, unlocked), while a rank's collectives run in a
    worker thread of their own, so each memory charge and stream entry is handed to the loop
    and waited for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 30.0) -> None:
        self._loop = loop
        self._timeout = timeout_s

    def __call__(self, fn: Callable[[], T]) -> T:
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        # Bounded: a loop that stopped (the agent shutting down) must not hang the rank.
        return done.result(timeout=self._timeout)


def _here(fn: Callable[[], T]) -> T:
    """The runtime belongs to the calling thread (a rank process's own runtime)."""
    return fn()
