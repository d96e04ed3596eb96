"""Helpers shared by the benchmarks: child service processes, CPU accounting, statistics, tables.

Every server a benchmark measures runs in its own process, started the way the launcher starts
it (``python -m <module>`` with ``POCGRID_*`` variables, the address reported through
``POCGRID_ADDRESS_FILE``), so the load generator never shares an interpreter or an event loop
with what it measures.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pocgrid.healthcheck import probe
from services.core import mesh_identity
from services.core.mesh_auth import MeshCredentials
from services.core.service_tokens import TokenSigner

REPO_ROOT = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


def mesh_keys() -> Path:
    """This benchmark run's mesh identity keys (made once per run, in a scratch directory):
    services want every call signed (docs/security.md). Kept in this process's environment so
    its multiprocessing children find the same keys."""
    existing = os.environ.get("POCGRID_BENCH_MESH_KEYS")
    if existing:
        return Path(existing)
    directory = Path(tempfile.mkdtemp(prefix="pocgrid-bench-keys-"))
    mesh_identity.generate(directory)
    os.environ["POCGRID_BENCH_MESH_KEYS"] = str(directory)
    return directory


def signer(identity: str) -> TokenSigner:
    """The signer of ``identity`` from this run's keys, for a benchmark's own direct calls."""
    return MeshCredentials.from_dir(mesh_keys(), identity).signer


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any POCGRID_*/OTEL_* setting, plus ``extra``.

    Dropping the caller's settings keeps runs alike: no stray OTLP exporter or trace file, no
    debug logging, whatever the shell that started the benchmark had exported.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POCGRID_", "OTEL_", "PYTHON"))}
    env.update(
        {
            "POCGRID_LISTEN": "127.0.0.1:0",
            "POCGRID_LOG_FORMAT": "json",
            "POCGRID_LOG_LEVEL": "info",
            "POCGRID_PARENT_PID": str(os.getpid()),
            "PYTHONPATH": str(REPO_ROOT),
            "POCGRID_MESH_KEYS_DIR": str(mesh_keys()),
        }
    )
    env.update(extra)
    return env


def spawn(
    name: str,
    args: Sequence[str],
    extra_env: Mapping[str, str],
    run_dir: Path,
    tree: Path = REPO_ROOT,
) -> Child:
    """Start ``python <args>`` as a child in its own session; its output goes to a log file.
    ``tree``: the source tree it runs (another checkout: an old release against this one)."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "addr").mkdir(parents=True, exist_ok=True)
    address_file = run_dir / "addr" / name
    address_file.unlink(missing_ok=True)
    env = child_env({"POCGRID_ADDRESS_FILE": str(address_file), **extra_env})
    env["PYTHONPATH"] = str(tree)
    log_path = run_dir / "logs" / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(name, proc, log_path)


def wait_ready(children: Sequence[Child], run_dir: Path, timeout_s: float = 60.0) -> None:
    """Wait until every child wrote its address file and answers SERVING on gRPC health."""
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    while pending:
        for child in list(pending):
            if child.proc.poll() is not None:
                tail = child.log_path.read_text(errors="replace")[-2000:]
                raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n{tail}")
            address_file = run_dir / "addr" / child.name
            if not child.address and address_file.exists():
                child.address = address_file.read_text().strip()
            if child.address and probe(child.address, timeout_s=1.0):
                pending.remove(child)
        if pending:
            if time.monotonic() > deadline:
                raise BenchError("not healthy in time: " + ", ".join(c.name for c in pending))
            time.sleep(0.05)


def stop(children: Sequence[Child], timeout_s: float = 10.0) -> None:
    """SIGTERM the children (they stop gracefully), SIGKILL whoever outlives ``timeout_s``."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after it are fixed. utime and stime
    # are fields 14 and 15, i.e. indexes 11 and 12 after the closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    """CPU time of this whole process (all threads, gRPC's included)."""
    return time.process_time()


# -- statistics ---------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def median_interval(
    values: Sequence[float], confidence: float = 0.90, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap interval for the median of ``values`` (seeded: the same data, the same
    interval). On a shared machine one round can be 15 % off its neighbours; the interval says
    whether a median is clear of a goal or merely on the right side of it this time."""
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return percentile(medians, 100 * tail), percentile(medians, 100 * (1.0 - tail))


# -- output -------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
