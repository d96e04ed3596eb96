"""``pocgrid comm bench``: real throughput of each collective beside the bare transport's.

For each collective and message size every rank runs the collective ``repeats`` times; the
median wall time gives the algorithm bandwidth (size / time) and the bus bandwidth (times
the ring's bytes per link: all-reduce 2(p-1)/p, reduce-scatter and all-gather (p-1)/p,
broadcast 1), the nccl-tests convention, so the figure compares with one link's rate. The
ceiling is the bare transport: every rank pushes the same bytes per link to its ring
successor over the same sockets with no framing, plan or reduction
(:meth:`Communicator.transport_probe`), timed in the same round as the collective; the ratio
is the median over rounds of (bare time / collective time). Between ranks on one host the
collectives move large payloads through shared-memory lanes (headers over TCP), between
hosts over TCP; the bare transport is timed both ways, the lanes moving raw bytes slot by
slot and TCP alone with one ``sendall``, and the ceiling of a round is the faster of the
two (on a busy host the lanes' per-slot hand-offs between threads wait on the scheduler
more than one long TCP stream does). The CPU ratio is the same comparison in CPU
seconds (user + system, every thread, summed over the ranks): on a busy host the wall
times mostly say how the scheduler treated each, while the CPU seconds say how much work
each did, which is what sets the wall time once the host's cores are the limit. The modelled
time is the alpha-beta virtual time of the same call on the emulated chips and network. A
single shared-memory copy between two ranks of this host is measured too.
"""

from __future__ import annotations

import resource
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
            walls, probes, cpus, probe_cpus, tcp_probes = [], [], [], [], []
            lanes = comm.transports and "tcp" not in comm.transports.values()
            # Interleaved rounds: the collective, then the bare transport with the same bytes
            # per link, so a noisy neighbour slows both of a round alike.
            for _ in range(repeats):
                comm.barrier()
                cpu = _cpu_s()
                start = time.perf_counter()
                _run_once(comm, kind, x, out)
                walls.append(time.perf_counter() - start)
                cpus.append(_cpu_s() - cpu)
                if per_link:
                    cpu = _cpu_s()
                    # The probe's own barriers are in its CPU seconds but not in its time.
                    probes.append(comm.transport_probe(per_link))
                    probe_cpus.append(_cpu_s() - cpu)
                    if lanes:
                        tcp_probes.append(comm.transport_probe(per_link, tcp=True))
            rows.append(
                {
                    "collective": kind,
                    "bytes": n * 4,
                    "algorithm": res.algorithm,
                    "detail": res.detail,
                    "wall_s": statistics.median(walls),
                    "walls_s": walls,
                    "lane_probes_s": probes if lanes else [],
                    "tcp_probes_s": tcp_probes if lanes else probes,
                    # The ceiling of each round: the faster bare transport.
                    "probes_s": [min(p) for p in zip(probes, tcp_probes, strict=True)]
                    if lanes
                    else probes,
                    "cpus_s": cpus,
                    "probe_cpus_s": probe_cpus,
                    "link_bytes": per_link,
                    "virtual_s": res.virtual_s,
                    "candidates": [list(c) for c in res.candidates],
                }
            )
            rows[-1]["probe_s"] = statistics.median(rows[-1]["probes_s"]) if probes else 0.0
    shm_row = _shm_probe(comm, max(sizes), repeats) if shm and p > 1 else None
    return {
        "rows": rows,
        "shm": shm_row,
        "ranks": [comm.topology.describe(r) for r in range(p)],
        "transports": sorted(set(comm.transports.values())),
    }


def _cpu_s() -> float:
    """CPU seconds of this process so far, every thread, user and system."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def merge_ranks(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's rows with every rank's CPU seconds summed per round (``cpus_s``,
    ``probe_cpus_s``) and the transports any rank used."""
    merged = dict(values[0])
    rows = []
    for k, row in enumerate(values[0]["rows"]):
        per_rank = [v["rows"][k] for v in values]
        rows.append(
            dict(
                row,
                cpus_s=[sum(c) for c in zip(*(r["cpus_s"] for r in per_rank), strict=True)],
                probe_cpus_s=[
                    sum(c) for c in zip(*(r["probe_cpus_s"] for r in per_rank), strict=True)
                ],
            )
        )
    merged["rows"] = rows
    merged["transports"] = sorted({t for v in values for t in v.get("transports", [])})
    return merged


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
        lane_s = statistics.median(row["lane_probes_s"]) if row["lane_probes_s"] else 0.0
        tcp_s = statistics.median(row["tcp_probes_s"]) if row["tcp_probes_s"] else 0.0
        # lib/bare per round = bare time / collective time (same bytes per link).
        ratios = sorted(b / w for w, b in zip(row["walls_s"], row["probes_s"], strict=False))
        cpu_ratios = sorted(
            b / c for c, b in zip(row["cpus_s"], row["probe_cpus_s"], strict=False) if c > 0
        )
        out.append(
            dict(
                row,
                cpu_ratio=statistics.median(cpu_ratios) if cpu_ratios else 0.0,
                algbw_gbs=size / wall / 1e9 if wall > 0 else 0.0,
                busbw_gbs=bus / 1e9,
                bare_gbs=bare / 1e9,
                lane_gbs=row["link_bytes"] / lane_s / 1e9 if lane_s > 0 else 0.0,
                tcp_gbs=row["link_bytes"] / tcp_s / 1e9 if tcp_s > 0 else 0.0,
                ratio=statistics.median(ratios) if ratios else 0.0,
                ratio_range=[ratios[0], ratios[-1]] if ratios else [0.0, 0.0],
            )
        )
    return out


def format_table(values: dict[str, Any]) -> str:
    rows = report_rows(values)
    lines = ["ranks: " + "; ".join(values["ranks"])]
    lines.append("transport between ranks: " + ", ".join(values.get("transports", [])))
    head = (
        f"{'collective':<15}{'size':>9}  {'algorithm':<13}{'wall ms':>9}{'busbw GB/s':>12}"
        f"{'bare: lanes':>12}{'tcp GB/s':>9}{'lib/bare':>9}{'(min-max)':>12}"
        f"{'CPU lib/bare':>13}{'modelled ms':>13}"
    )
    lines.append(head)
    for r in rows:
        lanes = f"{r['lane_gbs']:.3f}" if r["lane_gbs"] else "-"
        lines.append(
            f"{r['collective']:<15}{_fmt_size(r['bytes']):>9}  {r['algorithm']:<13}"
            f"{r['wall_s'] * 1e3:>9.2f}{r['busbw_gbs']:>12.3f}{lanes:>12}{r['tcp_gbs']:>9.3f}"
            f"{r['ratio']:>9.2f}{_range(r['ratio_range']):>12}{r['cpu_ratio']:>13.2f}"
            f"{r['virtual_s'] * 1e3:>13.4f}"
        )
    lines.append(
        "lib/bare: per round, the faster bare transport's time over the collective's (median, "
        "range); CPU lib/bare: the same in CPU seconds of all ranks, against the bare probe "
        "over the transport the collectives use"
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


__all__ = [
    "COLLECTIVE_KINDS",
    "bench_rank",
    "format_table",
    "merge_ranks",
    "parse_size",
    "report_rows",
]
