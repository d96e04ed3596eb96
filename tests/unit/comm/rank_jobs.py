"""Functions that run inside each rank process (launched by pocgrid.comm.launch.run_ranks).

Each returns JSON: the checks it made and what failed, so the test in the parent asserts on
one list instead of on four processes' output.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from pocgrid.comm import Communicator, get_unique_id
from pocgrid.comm.communicator import REDUCE_OPS
from pocgrid.comm.patterns import pattern

DTYPES = ("float32", "int32", "float64", "int64")


def expected_reduce(p: int, n: int, dtype: str, op: str, salt: int = 0) -> npt.NDArray[Any]:
    acc = pattern(0, n, dtype, salt)
    for r in range(1, p):
        x = pattern(r, n, dtype, salt)
        if op in ("sum", "avg"):
            acc = acc + x
        elif op == "max":
            acc = np.maximum(acc, x)
        else:
            acc = np.minimum(acc, x)
    if op == "avg":
        acc = acc / np.asarray(p, dtype=acc.dtype)
    return acc.astype(dtype)


def check_collectives(
    comm: Communicator, sizes: list[int], big: int, big_kinds: list[str]
) -> dict[str, Any]:
    p, r = comm.size, comm.rank
    failures: list[str] = []
    algorithms: set[str] = set()

    def check(name: str, got: npt.NDArray[Any], want: npt.NDArray[Any]) -> None:
        if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
            failures.append(f"{name}: got {got.dtype}{got.shape} {got.ravel()[:4]}")

    for n in sizes:
        for dtype in DTYPES:
            for op in REDUCE_OPS:
                if op == "avg" and not dtype.startswith("float"):
                    continue
                want = expected_reduce(p, n, dtype, op)
                for algo in (None, "ring", "tree", "hierarchical"):
                    res = comm.all_reduce(pattern(r, n, dtype), op, algorithm=algo)
                    algorithms.add(f"all_reduce:{res.algorithm}")
                    check(f"all_reduce n={n} {dtype} {op} {algo}", res.output, want)
            full = expected_reduce(p, n * p, dtype, "sum")
            res = comm.reduce_scatter(pattern(r, n * p, dtype), "sum")
            check(f"reduce_scatter n={n} {dtype}", res.output, full[r * n : (r + 1) * n])
            res = comm.all_gather(pattern(r, n, dtype))
            want = np.concatenate([pattern(k, n, dtype) for k in range(p)])
            check(f"all_gather n={n} {dtype}", res.output, want)
            for root in {0, p - 1}:
                for algo in ("tree", "pipeline"):
                    buf = pattern(root, n, dtype) if r == root else np.zeros(n, dtype=dtype)
                    res = comm.broadcast(buf, root, algorithm=algo)
                    check(
                        f"broadcast n={n} {dtype} root={root} {algo}",
                        res.output,
                        buf * 0 + pattern(root, n, dtype),
                    )
        # point to point around the ring, both directions
        nxt, prv = (r + 1) % p, (r - 1) % p
        if p > 1:
            if r % 2 == 0:
                comm.send(pattern(r, n, "float32"), nxt)
                got = np.empty(n, dtype=np.float32)
                comm.recv(got, prv)
            else:
                got = np.empty(n, dtype=np.float32)
                comm.recv(got, prv)
                comm.send(pattern(r, n, "float32"), nxt)
            check(f"send/recv n={n}", got, pattern(prv, n, "float32"))
        comm.barrier()
    for kind in big_kinds:
        # Large messages run in rounds (plans.in_rounds) and read the input in place.
        if kind == "all_reduce":
            want = expected_reduce(p, big, "float32", "sum")
            res = comm.all_reduce(pattern(r, big, "float32"), "sum")
            algorithms.add(f"all_reduce:{res.algorithm}")
            check(f"all_reduce n={big}", res.output, want)
            buf = pattern(r, big, "float32")
            comm.all_reduce(buf, "sum", out=buf)
            check(f"all_reduce in place n={big}", buf, want)
        elif kind == "reduce_scatter":
            count = big // p
            full = expected_reduce(p, count * p, "float32", "sum")
            got = np.full(count, -1, dtype=np.float32)
            res = comm.reduce_scatter(pattern(r, count * p, "float32"), "sum", out=got)
            algorithms.add(f"reduce_scatter:{res.algorithm}")
            check(f"reduce_scatter n={count * p}", got, full[r * count : (r + 1) * count])
        elif kind == "all_gather":
            count = big // p
            res = comm.all_gather(pattern(r, count, "float32"))
            algorithms.add(f"all_gather:{res.algorithm}")
            want = np.concatenate([pattern(k, count, "float32") for k in range(p)])
            check(f"all_gather n={count * p}", res.output, want)
        elif kind == "broadcast":
            buf = pattern(0, big, "float32") if r == 0 else np.zeros(big, dtype=np.float32)
            res = comm.broadcast(buf, 0)
            algorithms.add(f"broadcast:{res.algorithm}")
            check(f"broadcast n={big}", res.output, pattern(0, big, "float32"))
    # NCCL-style caller buffers: in place, and a given output
    for n in (1, 1001):
        buf = pattern(r, n, "int64")
        res = comm.all_reduce(buf, out=buf)
        check(f"all_reduce in place n={n}", buf, expected_reduce(p, n, "int64", "sum"))
        assert res.output.ctypes.data == buf.ctypes.data
        got = np.zeros(n * p, dtype=np.int64)
        comm.all_gather(pattern(r, n, "int64"), out=got)
        check(
            f"all_gather out n={n}", got, np.concatenate([pattern(k, n, "int64") for k in range(p)])
        )
        buf = pattern(r, n, "int64")
        comm.broadcast(buf, p - 1, out=buf)
        check(f"broadcast in place n={n}", buf, pattern(p - 1, n, "int64"))
        twice = [comm.reduce_scatter(pattern(r, n * p, "int64")).output for _ in range(2)]
        check(f"reduce_scatter reused work n={n}", twice[0], twice[1])
        want = expected_reduce(p, n * p, "int64", "sum")[r * n : (r + 1) * n]
        got = np.zeros(n, dtype=np.int64)
        res = comm.reduce_scatter(pattern(r, n * p, "int64"), out=got)
        check(f"reduce_scatter out n={n}", got, want)
        assert res.output.ctypes.data == got.ctypes.data
        # In place, NCCL style: the output is this rank's chunk of the input.
        buf = pattern(r, n * p, "int64")
        comm.reduce_scatter(buf, out=buf[r * n : (r + 1) * n])
        check(f"reduce_scatter in place n={n}", buf[r * n : (r + 1) * n], want)
        buf = np.zeros(n * p, dtype=np.int64)
        buf[r * n : (r + 1) * n] = pattern(r, n, "int64")
        comm.all_gather(buf[r * n : (r + 1) * n], out=buf)
        check(
            f"all_gather in place n={n}",
            buf,
            np.concatenate([pattern(k, n, "int64") for k in range(p)]),
        )
    transports = sorted(set(comm.transports.values()))
    return {"failures": failures, "algorithms": sorted(algorithms), "transports": transports}


def die_mid_collective(comm: Communicator, victim: int, n: int, delay_s: float) -> dict[str, Any]:
    """``victim`` exits abruptly ``delay_s`` into a large all-reduce; the others report."""
    if comm.rank == victim:
        threading.Timer(delay_s, lambda: os._exit(17)).start()
    start = time.monotonic()
    try:
        for _ in range(100):
            comm.all_reduce(np.ones(n, dtype=np.float32))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "after_s": time.monotonic() - start}
    return {"error": "", "after_s": time.monotonic() - start}


def stall_mid_collective(comm: Communicator, victim: int) -> dict[str, Any]:
    """``victim`` stops taking part (alive, silent); the others must time out, not hang."""
    comm.all_reduce(np.ones(10, dtype=np.float32))
    if comm.rank == victim:
        time.sleep(comm_timeout_of(comm) * 3)
        return {"error": "victim", "after_s": 0.0}
    start = time.monotonic()
    try:
        comm.all_reduce(np.ones(1000, dtype=np.float32))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "after_s": time.monotonic() - start}
    return {"error": "", "after_s": time.monotonic() - start}


def comm_timeout_of(comm: Communicator) -> float:
    return min(c.timeout_s for c in comm._conns.values())


def two_communicators(comm: Communicator, uid_b: str, rounds: int) -> dict[str, Any]:
    """A second communicator on the same processes, ranks reversed; both run at once."""
    p, r = comm.size, comm.rank
    other = Communicator.init_rank(
        uid_b, p, p - 1 - r, chip=comm.topology.ranks[r].chip, timeout_s=comm_timeout_of(comm)
    )
    failures: list[str] = []

    def run(c: Communicator, salt: int) -> None:
        for i in range(rounds):
            n = 1 + 3571 * i
            res = c.all_reduce(pattern(c.rank, n, "int64", salt), "sum")
            want = expected_reduce(c.size, n, "int64", "sum", salt)
            if not np.array_equal(res.output, want):
                failures.append(f"salt {salt} round {i}")

    with other:
        t = threading.Thread(target=run, args=(other, 1000))
        t.start()
        run(comm, 0)
        t.join()
    return {"failures": failures}


def make_uid() -> str:
    return get_unique_id().encode()


def agent_collectives(comm: Communicator, starve: int) -> dict[str, Any]:
    """An agent's runtime under the communicator; rank ``starve`` has no device memory left."""
    from pocgrid.catalog import default_catalog
    from services.agent.collectives import AgentCollectives
    from services.agent.runtime import create_runtime

    info = comm.topology.ranks[comm.rank]
    runtime = create_runtime(default_catalog().chip(info.chip), info.devices)
    agent = AgentCollectives(runtime, comm)
    used_before = runtime.memory_info(0).used_bytes
    res = agent.all_reduce(np.full(1000, comm.rank + 1, dtype=np.float32))
    streams = {i: [w.label for w in s.history] for i, s in runtime.streams.items()}
    busy = runtime.synchronize()
    out: dict[str, Any] = {
        "sum": float(res.output[0]),
        "virtual_s": res.virtual_s,
        "busy_s": busy,
        "labels": streams[0],
        "library": agent.library,
        "freed": runtime.memory_info(0).used_bytes == used_before,
    }
    if comm.rank == starve:
        free = runtime.memory_info(0).free_bytes
        runtime.malloc(0, free - 4096, tag="weights")
    try:
        agent.all_reduce(np.ones(1 << 16, dtype=np.float32))
        out["second"] = "ok"
    except Exception as exc:
        out["second"] = f"{type(exc).__name__}: {exc}"
    return out
