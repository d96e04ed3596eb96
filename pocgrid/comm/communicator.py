"""The NCCL-shaped communicator: join with a unique id, then run collectives on numpy arrays.

    uid = get_unique_id()                       # once, anywhere; hand it to every rank
    comm = Communicator.init_rank(uid, nranks, rank, chip="ascend-910b2", devices=8)
    result = comm.all_reduce(grads, op="sum")   # result.output, .algorithm, .virtual_s
    comm.close()

Every collective returns a :class:`CollectiveResult`: the output array, the algorithm chosen
(with the alternatives' modelled times), the virtual time from the alpha-beta model and the
wall time it really took here. Any failure (a peer that dies, stalls or calls something
else) aborts the communicator: this rank tells its peers why, closes its connections, and
every later call raises :class:`~pocgrid.comm.errors.CommAbortedError` with the first reason.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from pocgrid.comm import plans
from pocgrid.comm.errors import CommAbortedError, CommError, CommInputError
from pocgrid.comm.plans import Choice, Plan, Transfer
from pocgrid.comm.topology import NetworkConfig, RankInfo, Topology
from pocgrid.comm.transport import (
    KIND_COLLECTIVE,
    KIND_P2P,
    Connection,
    UniqueId,
    _SendItem,
    bootstrap,
)
from pocgrid.perf.collective import CollectiveKind

ReduceOp: TypeAlias = Literal["sum", "max", "min", "avg"]
REDUCE_OPS: Final[tuple[ReduceOp, ...]] = ("sum", "max", "min", "avg")
_UFUNC: Final = {"sum": np.add, "avg": np.add, "max": np.maximum, "min": np.minimum}
# Transfers move in frames of this size: each slice is reduced (or forwarded) as soon as it
# lands, overlapping the kernel receiving the next one.
_SLICE_BYTES: Final = int(os.environ.get("POCGRID_COMM_SLICE_BYTES", 2 << 20))
# Large collectives run in rounds over parts of this size (plans.in_rounds): a partial sum
# is passed on while it is still in cache.
_ROUND_BYTES: Final = int(os.environ.get("POCGRID_COMM_ROUND_BYTES", 2 << 20))
DEFAULT_TIMEOUT_S: Final = 30.0

log = logging.getLogger("pocgrid.comm")

Array: TypeAlias = npt.NDArray[np.generic]


@dataclass(frozen=True, slots=True)
class CollectiveResult:
    """What one collective did: output, algorithm, virtual and wall time."""

    kind: str
    output: Array
    algorithm: str
    detail: str
    nbytes: int
    """Message size as NCCL counts it (all-gather: output; reduce-scatter: input)."""
    virtual_s: float
    """Modelled time on the emulated chips and links."""
    wall_s: float
    """Time it took on this machine."""
    candidates: tuple[tuple[str, float], ...] = ()
    """Every algorithm considered and its modelled seconds."""


class Communicator:
    """One rank's handle on one communicator. Not thread-safe: one call at a time."""

    def __init__(
        self,
        uid: UniqueId,
        rank: int,
        topology: Topology,
        connections: dict[int, Connection],
    ) -> None:
        self.uid = uid
        self.rank = rank
        self.topology = topology
        self._conns = connections
        self._seq = 0
        self._p2p_sent: dict[int, int] = {}
        self._p2p_recv: dict[int, int] = {}
        self._aborted: str | None = None
        self._lock = threading.Lock()
        self.virtual_clock_s = 0.0
        """Sum of the virtual time of every collective this rank ran."""
        self.history: list[CollectiveResult] = []
        self._rs_work: tuple[tuple[int, str], Array] | None = None
        self._scratch_buf: npt.NDArray[np.uint8] | None = None
        self._probe_bufs: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] | None = None
        self._fault: Callable[[str, int], None] | None = None
        self._plans: dict[tuple[object, ...], _Prepared] = {}

    # -- joining --------------------------------------------------------------------------

    @classmethod
    def init_rank(
        cls,
        uid: UniqueId | str,
        nranks: int,
        rank: int,
        *,
        chip: str,
        devices: int = 1,
        node: str = "",
        network: NetworkConfig | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        host: str = "127.0.0.1",
    ) -> Communicator:
        """Join communicator ``uid`` as ``rank`` of ``nranks`` (blocks until all have joined)."""
        if isinstance(uid, str):
            uid = UniqueId.decode(uid)
        if timeout_s <= 0:
            raise CommInputError("timeout_s", "must be > 0")
        me = RankInfo(rank=rank, chip=chip, devices=devices, node=node)
        # Check the chip before joining, so a typo fails here and not at every peer.
        Topology([me], network)

        def describe(peer: int, entry: object) -> str:
            info = RankInfo.from_registration(peer, entry if isinstance(entry, dict) else {})
            return f"rank {peer} ({info.chip} x{info.devices}, pid {info.pid})"

        table, conns = bootstrap(
            uid,
            nranks,
            rank,
            me.to_registration(),
            host=host,
            timeout_s=timeout_s,
            describe=describe,
        )
        infos = [RankInfo.from_registration(r, e) for r, e in enumerate(table.ranks)]
        topo = Topology(infos, network)
        for peer, conn in conns.items():
            conn.describe_peer = topo.describe(peer)
        log.debug("communicator %s: rank %d of %d joined", uid.label, rank, nranks)
        return cls(uid, rank, topo, conns)

    @property
    def size(self) -> int:
        return self.topology.size

    @property
    def transports(self) -> dict[int, str]:
        """How this rank reaches each peer: ``shm`` (shared-memory lanes for large payloads,
        headers over TCP: same host) or ``tcp``."""
        return {peer: conn.transport for peer, conn in sorted(self._conns.items())}

    @property
    def label(self) -> str:
        return f"communicator {self.uid.label} rank {self.rank}"

    # -- collectives ----------------------------------------------------------------------

    def all_reduce(
        self,
        sendbuf: npt.ArrayLike,
        op: ReduceOp = "sum",
        *,
        out: Array | None = None,
        algorithm: str | None = None,
    ) -> CollectiveResult:
        """Every rank gets the elementwise reduction of every rank's ``sendbuf``.

        ``out`` (optional, NCCL's recvbuff) receives the result; it may be ``sendbuf`` itself
        (in place). Without it a new array is allocated.
        """
        src = self._input(sendbuf, "sendbuf", op)
        work = self._work(src, out, src.size, "out")
        layout = _Layout.over(work, src.reshape(-1))
        return self._run("all_reduce", layout, op, algorithm, src.shape, 0, src.nbytes, work)

    def reduce_scatter(
        self,
        sendbuf: npt.ArrayLike,
        op: ReduceOp = "sum",
        *,
        out: Array | None = None,
        algorithm: str | None = None,
    ) -> CollectiveResult:
        """Rank r gets chunk r of the reduction; ``sendbuf`` holds ``nranks`` equal chunks.

        ``out`` (optional, NCCL's recvbuff: ``len(sendbuf) / nranks`` elements) receives the
        chunk; the last reduction writes there directly. Without it a new array is allocated.
        """
        src = self._input(sendbuf, "sendbuf", op)
        if src.size % self.size:
            raise CommInputError(
                "sendbuf", f"length {src.size} must be a multiple of nranks={self.size}"
            )
        count = src.size // self.size
        dest = self._work(src, out, count, "out")
        # The partial sums this rank forwards live in an internal buffer, reused across calls
        # (a fresh one would be page-faulted in on every call). Only the chunks it receives
        # and forwards are written; its own chunk goes straight into ``dest``.
        key = (src.size, src.dtype.str)
        if self._rs_work is None or self._rs_work[0] != key:
            self._rs_work = (key, np.empty(src.size, dtype=src.dtype))
        layout = _Layout.over(self._rs_work[1], src.reshape(-1), own=(self.rank * count, dest))
        return self._run("reduce_scatter", layout, op, algorithm, None, 0, src.nbytes, dest)

    def all_gather(
        self,
        sendbuf: npt.ArrayLike,
        *,
        out: Array | None = None,
        algorithm: str | None = None,
    ) -> CollectiveResult:
        """Every rank gets every rank's ``sendbuf``, concatenated in rank order (flat), in
        ``out`` when given (nranks x the input's elements)."""
        src = self._input(sendbuf, "sendbuf", None)
        count = src.size
        work = self._work(src, out, count * self.size, "out")
        layout = _Layout.over(work, src.reshape(-1), src_at=self.rank * count)
        return self._run("all_gather", layout, None, algorithm, None, 0, work.nbytes, work)

    def broadcast(
        self,
        buf: npt.ArrayLike,
        root: int = 0,
        *,
        out: Array | None = None,
        algorithm: str | None = None,
    ) -> CollectiveResult:
        """Every rank gets ``root``'s ``buf``; the others pass an array of the same shape.
        The result goes to ``out`` when given (it may be ``buf`` itself: in place)."""
        if not 0 <= root < self.size:
            raise CommInputError("root", f"must be in 0..{self.size - 1}, got {root}")
        src = self._input(buf, "buf", None)
        work = self._work(src, out, src.size, "out")
        # Only the root's input is ever read: the others' ranges are all received.
        layout = _Layout.over(work, src.reshape(-1))
        return self._run("broadcast", layout, None, algorithm, src.shape, root, src.nbytes, work)

    def barrier(self) -> CollectiveResult:
        """Returns once every rank has entered the barrier."""
        return self.all_reduce(np.zeros(1, dtype=np.int32), "sum", algorithm="tree")

    # -- point to point --------------------------------------------------------------------

    def send(self, buf: npt.ArrayLike, peer: int) -> float:
        """Send ``buf`` to ``peer`` (which calls :meth:`recv`); returns the virtual seconds."""
        src = self._input(buf, "buf", None)
        conn = self._peer(peer)
        seq = self._p2p_sent.get(peer, 0)
        self._p2p_sent[peer] = seq + 1
        what = f"{self.label}: send #{seq} to rank {peer}"
        with self._guard(what):
            item = conn.send(KIND_P2P, seq, 0, _bytes_view(src))
            conn.wait_sent(item, what)
        seconds = self.topology.link(self.rank, peer).seconds(src.nbytes)
        self.virtual_clock_s += seconds
        return seconds

    def recv(self, out: Array, peer: int) -> float:
        """Receive into ``out`` (shape and dtype as the sender's) from ``peer``."""
        if not isinstance(out, np.ndarray) or not out.flags.c_contiguous:
            raise CommInputError("out", "must be a C-contiguous numpy array")
        conn = self._peer(peer)
        seq = self._p2p_recv.get(peer, 0)
        self._p2p_recv[peer] = seq + 1
        what = f"{self.label}: recv #{seq} from rank {peer}"
        with self._guard(what):
            conn.expect(KIND_P2P, seq, 0, out.nbytes, what)
            conn.recv_into(_bytes_view(out), what)
        seconds = self.topology.link(peer, self.rank).seconds(out.nbytes)
        self.virtual_clock_s += seconds
        return seconds

    # -- the bare transport (benchmark ceiling) ---------------------------------------------

    def transport_probe(self, nbytes: int, *, tcp: bool = False) -> float:
        """Wall seconds for every rank to push ``nbytes`` raw bytes to its ring successor
        while taking as many from its predecessor, with no framing, plan or reduction: the
        ceiling the collectives are measured against. Over what the collectives use
        (shared-memory lanes where there are some, slot by slot), or with ``tcp`` over the
        sockets alone (one ``sendall``)."""
        if self.size == 1:
            return 0.0
        self.barrier()
        order = plans.ring_order(self.topology)
        pos = order.index(self.rank)
        nxt = self._conns[order[(pos + 1) % self.size]]
        prv = self._conns[order[(pos - 1) % self.size]]
        # Buffers made and touched once, outside the timing, so no page fault is timed.
        if self._probe_bufs is None or self._probe_bufs[0].size != nbytes:
            self._probe_bufs = (np.ones(nbytes, dtype=np.uint8), np.ones(nbytes, dtype=np.uint8))
        data = memoryview(self._probe_bufs[0].data)
        view = memoryview(self._probe_bufs[1].data)
        errors: list[BaseException] = []

        def push() -> None:
            try:
                nxt.push_raw(data, tcp=tcp)
            except BaseException as exc:
                errors.append(exc)

        start = time.perf_counter()
        sender = threading.Thread(target=push, daemon=True)
        sender.start()
        try:
            prv.pull_raw(view, f"{self.label}: transport probe", tcp=tcp)
        except CommError as exc:
            raise CommAbortedError(f"{self.label}: probe failed: {exc}") from exc
        sender.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise CommAbortedError(f"{self.label}: probe failed: {errors[0]}")
        self.barrier()
        return elapsed

    # -- life cycle -----------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Give up on this communicator: tell the peers why and close every connection."""
        with self._lock:
            if self._aborted is not None:
                return
            self._aborted = reason
        for conn in self._conns.values():
            conn.send_abort(reason)
        for conn in self._conns.values():
            conn.close()

    def close(self) -> None:
        """Leave the communicator (idempotent)."""
        with self._lock:
            if self._aborted is None:
                self._aborted = "closed"
        for conn in self._conns.values():
            conn.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _input(self, buf: npt.ArrayLike, name: str, op: ReduceOp | None) -> Array:
        if self._aborted is not None:
            raise CommAbortedError(f"{self.label} is no longer usable: {self._aborted}")
        arr = np.ascontiguousarray(buf)
        if arr.dtype.kind not in "iuf":
            raise CommInputError(name, f"dtype {arr.dtype} is not a number type")
        if op is not None:
            if op not in REDUCE_OPS:
                raise CommInputError("op", f"must be one of {', '.join(REDUCE_OPS)}, got {op!r}")
            if op == "avg" and arr.dtype.kind != "f":
                raise CommInputError("op", f"avg needs a floating dtype, got {arr.dtype}")
        return arr

    def _work(self, src: Array, out: Array | None, n: int, name: str) -> Array:
        if out is None:
            return np.empty(n, dtype=src.dtype)
        if out.dtype != src.dtype or out.size != n or not out.flags.c_contiguous:
            raise CommInputError(name, f"must be C-contiguous {src.dtype} with {n} elements")
        return out.reshape(-1)

    def _peer(self, peer: int) -> Connection:
        if self._aborted is not None:
            raise CommAbortedError(f"{self.label} is no longer usable: {self._aborted}")
        if peer == self.rank or not 0 <= peer < self.size:
            raise CommInputError("peer", f"must be another rank in 0..{self.size - 1}")
        return self._conns[peer]

    def _guard(self, what: str) -> _AbortOnError:
        return _AbortOnError(self, what)

    def _run(
        self,
        kind: CollectiveKind,
        layout: _Layout,
        op: ReduceOp | None,
        algorithm: str | None,
        shape: tuple[int, ...] | None,
        root: int,
        nbytes: int,
        answer: Array,
    ) -> CollectiveResult:
        """Run the chosen plan over ``layout``; ``answer`` (flat) is where the result lands."""
        work = layout.work
        start = time.perf_counter()
        prepared = self._prepare(kind, work.size, work.itemsize, root, algorithm)
        choice = prepared.choice
        seq = self._seq
        self._seq += 1
        what = f"{self.label}: {kind} #{seq} ({choice.algorithm})"
        with self._guard(what):
            layout.prepare(prepared.mine)
            self._execute(prepared, layout, op, seq, what)
            layout.finish()
        wall = time.perf_counter() - start
        if op == "avg":
            np.divide(answer, self.size, out=answer)
        output = answer if shape is None else answer.reshape(shape)
        self.virtual_clock_s += choice.seconds
        result = CollectiveResult(
            kind=kind,
            output=output,
            algorithm=choice.algorithm,
            detail=choice.plan.detail,
            nbytes=nbytes,
            virtual_s=choice.seconds,
            wall_s=wall,
            candidates=choice.candidates,
        )
        log.debug(
            "%s: %d bytes, %s (%s), virtual %.3g s, wall %.3g s",
            what,
            nbytes,
            choice.algorithm,
            choice.plan.detail,
            choice.seconds,
            wall,
        )
        return result

    def _prepare(
        self, kind: CollectiveKind, n: int, itemsize: int, root: int, algorithm: str | None
    ) -> _Prepared:
        """The plan of this call, from the cache: the same call shape always gets the same
        plan (choosing and splitting it into rounds cost about a millisecond in Python,
        every call)."""
        key = (kind, n, itemsize, root, algorithm)
        found = self._plans.get(key)
        if found is None:
            choice = plans.choose(self.topology, kind, n, itemsize, root=root, algorithm=algorithm)
            plan = plans.in_rounds(choice.plan, max(1, _ROUND_BYTES // itemsize))
            mine = plan.transfers_of(self.rank)
            own = None
            if kind == "reduce_scatter":
                count = n // self.size
                own = (self.rank * count, (self.rank + 1) * count)
            found = _Prepared(choice, plan, mine, _fusable(plan, mine, own))
            if len(self._plans) >= 64:
                self._plans.clear()
            self._plans[key] = found
        return found

    def _execute(
        self, prepared: _Prepared, layout: _Layout, op: ReduceOp | None, seq: int, what: str
    ) -> None:
        """Run this rank's part of ``plan``, slice by slice.

        Transfers go as frames of at most ``_SLICE_BYTES``. A range this rank receives in one
        step and sends on in the next (every ring step, every tree level) is forwarded slice
        by slice as each slice lands, so the next step's sends overlap this step's receives
        instead of waiting for the whole chunk: the pipelining NCCL gets from its slices.

        A reduced slice is combined in one pass where it lands: while the range still holds
        this rank's input (in the caller's array), the slice is received straight into the
        range's home and this rank's input is added into it there (the slice is still in
        cache); once home holds the value, the slice lands in a scratch buffer and is added
        into home in place. On a loaded host every byte touched is CPU time (`docs/comm.md`,
        "Reduction and memory"). numpy releases the GIL, so the kernel keeps receiving the
        next slice into the socket buffer meanwhile.
        """
        plan, mine, fusable = prepared.plan, prepared.mine, prepared.fusable
        item = layout.work.itemsize
        per = max(1, _SLICE_BYTES // item)
        ufunc = _UFUNC[op] if op is not None else None
        nsteps = len(plan.steps)
        early: set[tuple[int, Transfer]] = set()
        pending: dict[int, list[tuple[Connection, _SendItem]]] = {}
        scratch = self._scratch(min(per, layout.work.size), layout.work.dtype)
        scratch_raw = _bytes_view(scratch)

        def issue(index: int, t: Transfer) -> list[tuple[Connection, _SendItem]]:
            conn = self._conns[t.dst]
            raw = _bytes_view(layout.current(t.lo, t.hi))
            base = t.lo
            return [
                (
                    conn,
                    conn.send(
                        KIND_COLLECTIVE,
                        seq,
                        index,
                        raw[(lo - base) * item : (hi - base) * item],
                        part,
                    ),
                )
                for part, (lo, hi) in enumerate(_slices(t, per))
            ]

        for k, (index, sends, recvs) in enumerate(mine):
            step_what = f"{what} step {index + 1}/{nsteps}"
            if self._fault is not None:
                self._fault(plan.kind, index)
            out = pending.setdefault(index, [])
            for t in sends:
                if (index, t) not in early:
                    out.extend(issue(index, t))
            following = mine[k + 1] if k + 1 < len(mine) else None
            onward: list[Transfer] = []
            if following is not None and following[0] == index + 1:
                onward = following[1]
            for t in recvs:
                conn = self._conns[t.src]
                forward = [u for u in onward if (u.lo, u.hi) == (t.lo, t.hi)]
                fwd_conns = [self._conns[u.dst] for u in forward]
                nxt = pending.setdefault(index + 1, []) if forward else []
                home = layout.home(t.lo, t.hi)
                home_raw = _bytes_view(home)
                mine_in_src = t.reduce and layout.fresh(t.lo, t.hi)
                own_value = layout.current(t.lo, t.hi) if mine_in_src else home
                # A partial sum that only passes through (sent on next step, never read here
                # again) is reduced straight into the successor's lane slot: one pass over
                # the data instead of a reduction and then a copy.
                fuse = len(fwd_conns) == 1 and (index, t.lo, t.hi) in fusable
                for part, (lo, hi) in enumerate(_slices(t, per)):
                    n = hi - lo
                    a, b = lo - t.lo, hi - t.lo
                    view = home_raw[a * item : b * item]
                    conn.expect(KIND_COLLECTIVE, seq, index, n * item, step_what, part)
                    slot = conn.take()
                    dst = fwd_conns[0].claim(n * item) if fuse and slot is not None else None
                    if dst is not None and slot is not None:
                        assert ufunc is not None
                        mine_or_home = own_value if mine_in_src else home
                        ufunc(mine_or_home[a:b], slot.view(home.dtype), out=dst.view(home.dtype))
                        conn.release()
                        fc = fwd_conns[0]
                        nxt.append((fc, fc.send_claimed(seq, index + 1, n * item, part)))
                        continue
                    if slot is not None:
                        # Same host: the peer's slice lies in shared memory; reduce (or
                        # copy) it from there, with no receive copy at all.
                        incoming = slot.view(home.dtype)
                        if not t.reduce:
                            home[a:b] = incoming
                        elif mine_in_src:
                            assert ufunc is not None
                            ufunc(own_value[a:b], incoming, out=home[a:b])
                        else:
                            assert ufunc is not None
                            ufunc(home[a:b], incoming, out=home[a:b])
                        conn.release()
                    elif not t.reduce:
                        conn.recv_into(view, step_what)
                    elif mine_in_src:
                        assert ufunc is not None
                        conn.recv_into(view, step_what)
                        # own + incoming, the operand order of the scratch path below.
                        ufunc(own_value[a:b], home[a:b], out=home[a:b])
                    else:
                        assert ufunc is not None
                        conn.recv_into(scratch_raw[: n * item], step_what)
                        ufunc(home[a:b], scratch[:n], out=home[a:b])
                    for fc in fwd_conns:
                        nxt.append((fc, fc.send(KIND_COLLECTIVE, seq, index + 1, view, part)))
                layout.mark(t.lo, t.hi)
                for u in forward:
                    early.add((index + 1, u))
            for conn, sent in pending.pop(index, []):
                conn.wait_sent(sent, step_what)
        for index, items in pending.items():
            for conn, sent in items:
                conn.wait_sent(sent, f"{what} step {index + 1}/{nsteps}")

    def _scratch(self, n: int, dtype: np.dtype[np.generic]) -> Array:
        """The receive buffer of reduced slices: one per communicator, reused (no allocation
        or page faults per step or per call)."""
        need = max(1, n) * dtype.itemsize
        if self._scratch_buf is None or self._scratch_buf.size < need:
            self._scratch_buf = np.empty(need, dtype=np.uint8)
        return self._scratch_buf[:need].view(dtype)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A call shape's plan as this rank runs it."""

    choice: Choice
    plan: Plan
    """The chosen plan in rounds (plans.in_rounds)."""
    mine: list[tuple[int, list[Transfer], list[Transfer]]]
    fusable: frozenset[tuple[int, int, int]]
    """(step, lo, hi) of reduced receives that may be reduced into the next hop's slot."""


def _fusable(
    plan: Plan,
    mine: list[tuple[int, list[Transfer], list[Transfer]]],
    own: tuple[int, int] | None,
) -> frozenset[tuple[int, int, int]]:
    """Reduced receives whose result this rank only passes on: received at step i, sent on
    (to one peer, the same range) at step i + 1, and then never read again here: the next
    thing to happen to the range is a receive that overwrites it, or nothing when the range
    is not part of the answer (reduce-scatter, outside this rank's chunk). Needs ranges that
    are identical or disjoint (the rounds plans); other plans fuse nothing."""
    ranges = sorted({(t.lo, t.hi) for step in plan.steps for t in step})
    if any(a[1] > b[0] for a, b in itertools.pairwise(ranges)):
        return frozenset()
    events: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for index, sends, recvs in mine:
        for t in sends:
            events.setdefault((t.lo, t.hi), []).append((index, "send"))
        for t in recvs:
            events.setdefault((t.lo, t.hi), []).append((index, "reduce" if t.reduce else "copy"))
    out = set()
    for key, seq in events.items():
        for k, (index, what) in enumerate(seq):
            if what != "reduce":
                continue
            after = seq[k + 1 :]
            if not after or after[0] != (index + 1, "send"):
                continue
            if len(after) > 1 and after[1][0] == index + 1:
                continue  # sent on to more than one peer
            rest = after[1:]
            if rest:
                ok = rest[0][1] == "copy"
            else:
                ok = own is not None and (key[1] <= own[0] or key[0] >= own[1])
            if ok:
                out.add((index, key[0], key[1]))
    return frozenset(out)


def _slices(t: Transfer, per: int) -> list[tuple[int, int]]:
    return [(lo, min(t.hi, lo + per)) for lo in range(t.lo, t.hi, per)]


class _AbortOnError:
    """Context manager: a failure inside a collective aborts the communicator."""

    def __init__(self, comm: Communicator, what: str) -> None:
        self.comm = comm
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, CommError):
            self.comm.abort(str(exc))
        else:
            self.comm.abort(f"{self.what}: {type(exc).__name__}: {exc}")


def _bytes_view(arr: Array) -> memoryview:
    """The array's bytes, without a copy (C-contiguous input)."""
    return memoryview(arr.reshape(-1).view(np.uint8).data)


class _Layout:
    """Where each range of a collective's flat buffer lives while its plan runs.

    ``work`` keeps the ranges this rank receives: the caller's output, or for reduce-scatter
    an internal buffer of the partial sums it forwards. The caller's input ``src`` (covering
    ``[src_at, src_at + src.size)``) is read where it is until this rank first receives into
    a range, instead of being copied into ``work`` before the plan starts: for a 64 MB
    reduce-scatter that up-front copy (and the copy of the rank's chunk out afterwards) cost
    about a quarter of the call on this machine. ``own = (lo, array)`` keeps the range
    ``[lo, lo + array.size)`` in ``array`` (the caller's output chunk), so the last reduction
    writes there directly. ``src=None`` means ``work`` already holds the input (in place).

    This needs every range the plan moves to be, at the moment it moves, either wholly
    received before or not at all, and inside ``own`` or outside it (true of every plan in
    :mod:`pocgrid.comm.plans`); :meth:`prepare` checks that on the rank's transfers and
    otherwise falls back to copying the input into ``work`` first, which is always right.
    """

    def __init__(
        self, work: Array, src: Array | None, src_at: int, own: tuple[int, Array] | None
    ) -> None:
        self.work = work
        self.src = src
        self.src_at = src_at
        self.own = own
        self._own_copy_out: tuple[int, Array] | None = None
        self._done: list[tuple[int, int]] = []

    @classmethod
    def over(
        cls,
        work: Array,
        src: Array,
        *,
        src_at: int = 0,
        own: tuple[int, Array] | None = None,
    ) -> _Layout:
        """Read ``src`` in place, unless it is ``work`` itself (an in-place call) or overlaps
        what this call writes (then a copy of it is read, as the written ranges change)."""
        same = (
            src_at == 0
            and src.size == work.size
            and src.dtype == work.dtype
            and src.ctypes.data == work.ctypes.data
        )
        if same and own is None:
            return cls(work, None, 0, None)
        if np.may_share_memory(src, work) or (own is not None and np.may_share_memory(src, own[1])):
            src = src.copy()
        return cls(work, src, src_at, own)

    # -- which ranges have been received ----------------------------------------------------

    @staticmethod
    def _covered(done: list[tuple[int, int]], lo: int, hi: int) -> int:
        return sum(max(0, min(hi, b) - max(lo, a)) for a, b in done)

    @staticmethod
    def _add(done: list[tuple[int, int]], lo: int, hi: int) -> None:
        merged = [lo, hi]
        keep = []
        for a, b in done:
            if b < merged[0] or a > merged[1]:
                keep.append((a, b))
            else:
                merged = [min(a, merged[0]), max(b, merged[1])]
        keep.append((merged[0], merged[1]))
        done[:] = sorted(keep)

    def mark(self, lo: int, hi: int) -> None:
        """This rank has received (and combined) ``[lo, hi)``: its value is now at home."""
        self._add(self._done, lo, hi)

    # -- where a range is -------------------------------------------------------------------

    def home(self, lo: int, hi: int) -> Array:
        """Where the range is kept once received."""
        if self.own is not None:
            olo, arr = self.own
            if olo <= lo and hi <= olo + arr.size:
                return arr[lo - olo : hi - olo]
        return self.work[lo:hi]

    def fresh(self, lo: int, hi: int) -> bool:
        """The range still has this rank's input value, read from the caller's array."""
        return self.src is not None and self._covered(self._done, lo, hi) == 0

    def current(self, lo: int, hi: int) -> Array:
        """Where the range's value is now: the input until received, then home."""
        if self.src is None or self._covered(self._done, lo, hi) == hi - lo:
            return self.home(lo, hi)
        return self.src[lo - self.src_at : hi - self.src_at]

    # -- before and after the plan ----------------------------------------------------------

    def prepare(self, transfers: list[tuple[int, list[Transfer], list[Transfer]]]) -> None:
        """Check the rank's transfers fit the lazy layout, else copy the input in first."""
        if self.src is not None and self._fits(transfers):
            return
        if self.src is not None:
            self.work[self.src_at : self.src_at + self.src.size] = self.src
            self.src = None
        if self.own is not None:
            self._own_copy_out, self.own = self.own, None

    def _fits(self, transfers: list[tuple[int, list[Transfer], list[Transfer]]]) -> bool:
        assert self.src is not None
        done: list[tuple[int, int]] = []
        src_lo, src_hi = self.src_at, self.src_at + self.src.size

        def ok(t: Transfer, reads: bool) -> bool:
            seen = self._covered(done, t.lo, t.hi)
            if 0 < seen < t.hi - t.lo:
                return False
            if self.own is not None:
                olo, arr = self.own
                inside = max(0, min(t.hi, olo + arr.size) - max(t.lo, olo))
                if 0 < inside < t.hi - t.lo:
                    return False
            return not (reads and seen == 0 and not (src_lo <= t.lo and t.hi <= src_hi))

        for _index, sends, recvs in transfers:
            if not all(ok(t, True) for t in sends):
                return False
            for t in recvs:
                if not ok(t, t.reduce):
                    return False
                self._add(done, t.lo, t.hi)
        return True

    def finish(self) -> None:
        """Copy what this rank never received (its own input) into the result."""
        if self._own_copy_out is not None:
            olo, arr = self._own_copy_out
            arr[...] = self.work[olo : olo + arr.size]
            return
        if self.src is None:
            return
        lo, hi = (self.own[0], self.own[0] + self.own[1].size) if self.own else (0, self.work.size)
        cursor = lo
        for a, b in [*self._done, (hi, hi)]:
            gap_lo, gap_hi = max(cursor, lo, self.src_at), min(a, hi, self.src_at + self.src.size)
            if gap_lo < gap_hi:
                self.home(gap_lo, gap_hi)[...] = self.src[
                    gap_lo - self.src_at : gap_hi - self.src_at
                ]
            cursor = max(cursor, b)
