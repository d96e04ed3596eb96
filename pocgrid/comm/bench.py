"""``pocgrid comm bench``: real throughput of each collective beside the bare transport's.

For each collective and message size every rank runs the collective ``repeats`` times; the
median wall time gives the algorithm bandwidth (size / time) and the bus bandwidth (times
the ring's bytes per link: all-reduce 2(p-1)/p, reduce-scatter and all-gather (p-1)/p,
broadcast 1), the nccl-tests convention, so the figure compares with one link's rate. The
ceiling is the bare transport: every rank pushes the same bytes per link to its ring
successor over the same sockets with no framing, plan or reduction
(:meth:`Communicator.transport_probe`), timed in the same round as the collective; the ratio
is the median over rounds of (bare time / collective time). The modelled time is the
alpha-beta virtual time of the same call on the emulated chips and network. A shared-memory
copy between two ranks of this host is measured too, as what a same-host transport could
reach.
"""

from __future__ import annotations

import statistics
import time
from multiprocessing import shared_memory
from typing import Any, Final

import numpy as np

from pocgrid.comm.communicator import Communicator
from pocgrid.perf.collective import COLLECTIVE_KINDS, CollectiveKind, bus_factor

DEFAULT_RANKS: Final = "ascend-910b2:8,a100-80gb-sxm:8,ascend-910b2:8,a100-80gb-sxm:8"
DEFAULT_SIZES: Final = ("4K", "1M", "16M", "64M")
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    value = float(text[: len(text) - len(unit)])
    return int(value * _UNITS[unit])


def _run_once(comm: Communicator, kind: CollectiveKind, x: np.ndarray, out: np.ndarray) -> Any:
    """One call with caller-owned buffers, as an application makes it: the all-reduce in
    place (as data-parallel training reduces its gradients), the others into ``out``."""
    if kind == "all_reduce":
        return comm.all_reduce(out, out=out)
    if kind == "reduce_scatter":
        return comm.reduce_scatter(x, out=out[: x.size // comm.size])
    if kind == "all_gather":
        return comm.all_gather(x[: x.size // comm.size], out=out)
    return comm.broadcast(x, 0, out=out)


def bench_rank(
    comm: Communicator, sizes: list[int], kinds: list[str], repeats: int, shm: bool
) -> dict[str, Any]:
    """Runs on every rank; returns this rank's timings (the parent reports rank 0's)."""
    rows = []
    p = comm.size
    for size in sizes:
        n = max(p, size // 4)
        n -= n % p
        x = np.ones(n, dtype=np.float32)
        out = np.zeros(n, dtype=np.float32)
        for kind_name in kinds:
            kind: CollectiveKind = kind_name  # type: ignore[assignment]
            res = _run_once(comm, kind, x, out)  # warm-up, and the algorithm chosen
            per_link = int(bus_factor(kind, p) * n * 4) if p > 1 else 0
            walls, probes = [], []
            # Interleaved rounds: the collective, then the bare transport with the same bytes
            # per link, so a noisy neighbour slows both of a round alike.
            for _ in range(repeats):
                comm.barrier()
                start = time.perf_counter()
                _run_once(comm, kind, x, out)
                walls.append(time.perf_counter() - start)
                if per_link:
                    probes.append(comm.transport_probe(per_link))
            rows.append(
                {
                    "collective": kind,
                    "bytes": n * 4,
                    "algorithm": res.algorithm,
                    "detail": res.detail,
                    "wall_s": statistics.median(walls),
                    "probe_s": statistics.median(probes) if probes else 0.0,
                    "walls_s": walls,
                    "probes_s": probes,
                    "link_bytes": per_link,
                    "virtual_s": res.virtual_s,
                    "candidates": [list(c) for c in res.candidates],
                }
            )
    shm_row = _shm_probe(comm, max(sizes), repeats) if shm and p > 1 else None
    return {"rows": rows, "shm": shm_row, "ranks": [comm.topology.describe(r) for r in range(p)]}


def _shm_probe(comm: Communicator, nbytes: int, repeats: int) -> dict[str, float] | None:
    """Rank 0 copies ``nbytes`` into a shared segment, rank 1 copies them out."""
    name = np.zeros(64, dtype=np.uint8)
    block = None
    if comm.rank == 0:
        block = shared_memory.SharedMemory(create=True, size=nbytes)
        raw = block.name.encode()
        name[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    got = np.asarray(comm.broadcast(name, 0).output, dtype=np.uint8)
    if comm.rank == 1:
        block = shared_memory.SharedMemory(name=bytes(got[got > 0]).decode())
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty(nbytes, dtype=np.uint8)
    times = []
    try:
        for _ in range(repeats):
            comm.barrier()
            start = time.perf_counter()
            if comm.rank == 0 and block is not None:
                np.frombuffer(_buf(block), dtype=np.uint8)[:] = src
            comm.barrier()
            if comm.rank == 1 and block is not None:
                dst[:] = np.frombuffer(_buf(block), dtype=np.uint8)
            comm.barrier()
            times.append(time.perf_counter() - start)
    finally:
        if block is not None:
            block.close()
        comm.barrier()
        if comm.rank == 0 and block is not None:
            block.unlink()
    return {"bytes": float(nbytes), "seconds": statistics.median(times)}


def _buf(block: shared_memory.SharedMemory) -> memoryview:
    buf = block.buf
    assert buf is not None  # open until close()
    return buf


def report_rows(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Rank 0's rows with the derived rates."""
    out = []
    for row in values["rows"]:
        size, wall = row["bytes"], row["wall_s"]
        kind = row["collective"]
        nranks = len(values["ranks"])
        bus = size / wall * bus_factor(kind, nranks) if wall > 0 else 0.0
        bare = row["link_bytes"] / row["probe_s"] if row["probe_s"] > 0 else 0.0
        # lib/bare per round = bare time / collective time (same bytes per link).
        ratios = sorted(b / w for w, b in zip(row["walls_s"], row["probes_s"], strict=False))
        out.append(
            dict(
                row,
                algbw_gbs=size / wall / 1e9 if wall > 0 else 0.0,
                busbw_gbs=bus / 1e9,
                bare_gbs=bare / 1e9,
                ratio=statistics.median(ratios) if ratios else 0.0,
                ratio_range=[ratios[0], ratios[-1]] if ratios else [0.0, 0.0],
            )
        )
    return out


def format_table(values: dict[str, Any]) -> str:
    rows = report_rows(values)
    lines = ["ranks: " + "; ".join(values["ranks"])]
    head = (
        f"{'collective':<15}{'size':>9}  {'algorithm':<13}{'wall ms':>9}{'busbw GB/s':>12}"
        f"{'bare GB/s':>11}{'lib/bare':>9}{'(min-max)':>12}{'modelled ms':>13}"
    )
    lines.append(head)
    for r in rows:
        lines.append(
            f"{r['collective']:<15}{_fmt_size(r['bytes']):>9}  {r['algorithm']:<13}"
            f"{r['wall_s'] * 1e3:>9.2f}{r['busbw_gbs']:>12.3f}{r['bare_gbs']:>11.3f}"
            f"{r['ratio']:>9.2f}{_range(r['ratio_range']):>12}{r['virtual_s'] * 1e3:>13.4f}"
        )
    shm = values.get("shm")
    if shm:
        rate = shm["bytes"] / shm["seconds"] / 1e9
        lines.append(
            f"shared-memory copy in + copy out, rank 0 -> 1, {_fmt_size(int(shm['bytes']))}: "
            f"{rate:.3f} GB/s ({shm['seconds'] * 1e3:.1f} ms)"
        )
    return "\n".join(lines)


def _range(lohi: list[float]) -> str:
    return f"{lohi[0]:.2f}-{lohi[1]:.2f}"


def _fmt_size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


__all__ = ["COLLECTIVE_KINDS", "bench_rank", "format_table", "parse_size", "report_rows"]
