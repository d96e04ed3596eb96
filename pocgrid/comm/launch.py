"""Run one function on every rank of a communicator, one process per rank (tests, bench, CLI).

Each rank is a fresh interpreter (never a fork of a process that may hold gRPC channels or
threads). The parent makes the unique id and hosts the bootstrap root; each child joins as its
rank, calls ``target(comm, **kwargs)`` and reports the return value (or the error) back. The
parent waits for every rank up to a deadline, then terminates whatever is left.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pocgrid.comm.communicator import DEFAULT_TIMEOUT_S, Communicator
from pocgrid.comm.errors import CommInputError
from pocgrid.comm.topology import NetworkConfig, RankInfo, Topology
from pocgrid.comm.transport import get_unique_id

FAILURE_GRACE_S = 5.0
"""After one rank fails, how long the others get to report before they are terminated."""


@dataclass(frozen=True, slots=True)
class RankSpec:
    """One agent taking part: its chip, how many of its devices, and its node."""

    chip: str
    devices: int = 1
    node: str = ""


@dataclass(slots=True)
class RankOutcome:
    rank: int
    ok: bool
    value: Any = None
    error: str = ""
    error_type: str = ""
    seconds: float = 0.0
    """Wall seconds from the start of the launch until this rank reported (or was reaped)."""
    exitcode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_ranks(text: str) -> list[RankSpec]:
    """``CHIP[:DEVICES][@NODE],...``, e.g. ``ascend-910b2:8,a100-80gb-sxm:8@n1,mlu370-x8:4``."""
    specs = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        node = ""
        if "@" in part:
            part, node = part.split("@", 1)
        devices = 1
        if ":" in part:
            part, count = part.split(":", 1)
            if not count.isdigit() or int(count) < 1:
                raise CommInputError("ranks", f"{raw.strip()!r}: devices must be an integer >= 1")
            devices = int(count)
        specs.append(RankSpec(part, devices, node))
    if not specs:
        raise CommInputError("ranks", "name at least one chip")
    Topology([RankInfo(r, s.chip, s.devices, s.node) for r, s in enumerate(specs)])
    return specs


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{target} is not callable")
    return fn  # type: ignore[no-any-return]


def rank_main(job: Mapping[str, Any]) -> dict[str, Any]:
    """What one rank process does with its job description (see ``python -m pocgrid.comm.rank``)."""
    try:
        fn = _resolve(str(job["target"]))
        spec = RankSpec(**job["spec"])
        net = job.get("network")
        comm = Communicator.init_rank(
            str(job["uid"]),
            int(job["nranks"]),
            int(job["rank"]),
            chip=spec.chip,
            devices=spec.devices,
            node=spec.node,
            network=None if net is None else NetworkConfig(**net),
            timeout_s=float(job["comm_timeout_s"]),
        )
        with comm:
            value = fn(comm, **job.get("kwargs", {}))
        return {"ok": True, "value": value}
    except Exception as exc:
        text = str(exc) or traceback.format_exc(limit=3)
        return {"ok": False, "error": text, "error_type": type(exc).__name__}


def run_ranks(
    target: str,
    specs: Sequence[RankSpec],
    *,
    kwargs: Mapping[str, Any] | None = None,
    network: NetworkConfig | None = None,
    comm_timeout_s: float = DEFAULT_TIMEOUT_S,
    timeout_s: float = 300.0,
) -> list[RankOutcome]:
    """Run ``module:function`` (JSON in, JSON out) on one process per spec, in rank order.

    Each rank is ``python -m pocgrid.comm.rank`` reading its job from a file and writing its
    result to another: no fork of this process, no main-module re-import, nothing shared.
    """
    if not specs:
        raise CommInputError("specs", "need at least one rank")
    Topology([RankInfo(r, s.chip, s.devices, s.node) for r, s in enumerate(specs)], network)
    uid = get_unique_id(timeout_s=timeout_s)
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])
    start = time.monotonic()
    outcomes: dict[int, RankOutcome] = {}
    first_failure: int | None = None
    with tempfile.TemporaryDirectory(prefix="pgcx-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for rank, spec in enumerate(specs):
                job = {
                    "target": target,
                    "uid": uid.encode(),
                    "nranks": len(specs),
                    "rank": rank,
                    "spec": asdict(spec),
                    "kwargs": dict(kwargs or {}),
                    "comm_timeout_s": comm_timeout_s,
                    "network": None if network is None else asdict(network),
                }
                job_file = Path(tmp, f"job-{rank}.json")
                job_file.write_text(json.dumps(job))
                with Path(tmp, f"stderr-{rank}.txt").open("wb") as err:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "pocgrid.comm.rank", str(job_file)],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=err,
                            env=env,
                        )
                    )
            deadline = start + timeout_s
            pending = set(range(len(procs)))
            while pending and time.monotonic() < deadline:
                for r in sorted(pending):
                    code = procs[r].poll()
                    if code is None:
                        continue
                    pending.discard(r)
                    outcomes[r] = _outcome(r, code, Path(tmp), time.monotonic() - start)
                    if not outcomes[r].ok and first_failure is None:
                        # The others fail on their own (peer lost) or would wait for a rank
                        # that never joins; give them a moment to report, then stop them.
                        first_failure = r
                        deadline = min(deadline, time.monotonic() + FAILURE_GRACE_S)
                if pending:
                    time.sleep(0.02)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for r in range(len(procs)):
            if r not in outcomes:
                why = f"no result within {timeout_s:g} s"
                if first_failure is not None:
                    why = f"rank {first_failure} failed first"
                outcomes[r] = RankOutcome(
                    r,
                    False,
                    error=f"{why} (terminated)",
                    error_type="LaunchTimeout",
                    seconds=time.monotonic() - start,
                    exitcode=procs[r].returncode,
                )
    return [outcomes[r] for r in range(len(specs))]


def _outcome(rank: int, code: int, tmp: Path, seconds: float) -> RankOutcome:
    result_file = tmp / f"job-{rank}.json.result"
    if not result_file.exists():
        tail = (tmp / f"stderr-{rank}.txt").read_text(errors="replace")[-2000:]
        return RankOutcome(
            rank,
            False,
            error=f"process exited with code {code} without a result. {tail}".strip(),
            error_type="ProcessExit",
            seconds=seconds,
            exitcode=code,
        )
    body = json.loads(result_file.read_text())
    return RankOutcome(
        rank,
        bool(body.get("ok")),
        value=body.get("value"),
        error=str(body.get("error", "")),
        error_type=str(body.get("error_type", "")),
        seconds=seconds,
        exitcode=code,
    )
