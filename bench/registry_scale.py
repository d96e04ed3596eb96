"""Can one registry keep a fleet alive? 1,000 simulated agents heartbeating every 2 s.

One registry process (``python -m services.registry``, default lease settings: lease_ttl_ms
10000, heartbeat_interval_ms 2000, SQLite in a temporary directory, a real nats-server) and a
separate load-generator process. The load generator registers every agent (RegisterNode with
``--devices`` devices each), then runs one asyncio task per agent that heartbeats on a fixed
schedule: agent i starts at ``i / agents`` of an interval, so the offered load is an even
``agents / interval`` heartbeats a second (500/s by default), each carrying a status for every
device. The heartbeat interval is the one the registry hands out in RegisterNodeResponse, as a
real agent uses it.

After a warm-up the measurement window opens; over it the benchmark reports heartbeat latency
percentiles (send to response, as the agent sees it), heartbeats/s achieved against expected,
errors by status code, how late the load generator sent (so a saturated client is visible),
and the CPU both processes used (utime+stime from /proc, as % of one core). At the end ListNodes
must show every node READY: a node marked LOST while heartbeating is a failure.

    .venv/bin/python -m bench.registry_scale [--agents 1000] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench._util import (
    Child,
    cpu_seconds,
    percentile,
    self_cpu_seconds,
    signer,
    spawn,
    stop,
    table,
    wait_ready,
)
from devmesh.nats_server import NatsServer
from pocgrid.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.core.mesh_channel import signed_aio_channel, signed_channel

GOAL_P99_MS = 50.0
CHIPS = ("ascend-910b2", "mlu590", "dcu-k100-ai", "kunlun-p800", "mtt-s4000", "bi-v150")
_GIB = 1 << 30
_MEMORY_TOTAL = 64 * _GIB
_REGISTER_ATTEMPTS = 10
_NO_RETRY = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED)


# -- the load generator (runs in its own process) -------------------------------------------
@dataclass(frozen=True)
class LoadPlan:
    registry: str
    agent_ids: list[int]  # global indexes of this process's agents
    agents_total: int
    devices: int
    channels: int
    memory_churn: float
    register_concurrency: int
    seed: int
    t0_wall: float  # time.time() at which the heartbeat schedule starts


@dataclass
class LoadResult:
    registered: int = 0
    unregistered: int = 0  # gave up after _REGISTER_ATTEMPTS
    register_errors: Counter[str] = field(default_factory=Counter)
    register_latencies_s: list[float] = field(default_factory=list)
    register_seconds: float = 0.0
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    errors_outside_window: Counter[str] = field(default_factory=Counter)
    send_lag_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    window_s: float = 0.0


def node_id(i: int) -> str:
    return f"bench-node-{i:05d}"


def _register_request(i: int, devices: int) -> registry_pb2.RegisterNodeRequest:
    chip = CHIPS[i % len(CHIPS)]
    return registry_pb2.RegisterNodeRequest(
        node_id=node_id(i),
        chip=chip,
        agent_address=f"10.0.{i // 250}.{i % 250 + 1}:50051",
        runtime_name="bench",
        runtime_version="0",
        hostname=f"bench-host-{i:05d}",
        devices=[
            registry_pb2.Device(
                device_id=f"dev:{d}",
                index=d,
                memory_total_bytes=_MEMORY_TOTAL,
                health=common_pb2.DEVICE_HEALTH_HEALTHY,
            )
            for d in range(devices)
        ],
    )


async def _run_load(plan: LoadPlan, conn: multiprocessing.connection.Connection) -> LoadResult:
    result = LoadResult()
    rng = random.Random(plan.seed)
    # A local subchannel pool per channel: each channel is its own TCP connection, as separate
    # agents would have, instead of gRPC sharing one connection between same-target channels.
    # Signed as the agents are: only the agent identity may register and heartbeat.
    agent_signer = signer("agent")
    channels = [
        signed_aio_channel(
            plan.registry, agent_signer, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(plan.channels)
    ]
    stubs = [registry_pb2_grpc.NodeLeaseServiceStub(ch) for ch in channels]
    loop = asyncio.get_running_loop()
    clock = time.perf_counter

    # Every agent registers (a bounded number at a time, as a fleet coming up would) and then
    # heartbeats at once on the shared schedule: slot k of agent i is due at
    # t0 + interval * (k + i / agents_total). The measurement window is set by the parent once
    # every load process has registered all its agents.
    skew = clock() - time.time()  # the parent's wall-clock instants on this perf_counter
    t0 = plan.t0_wall + skew
    window: list[float] = []  # [start, end] once known
    all_registered = asyncio.Event()
    gate = asyncio.Semaphore(plan.register_concurrency)
    interval_s = 0.0
    memory = {i: [0] * plan.devices for i in plan.agent_ids}

    def heartbeat_request(i: int, sequence: int) -> registry_pb2.HeartbeatRequest:
        used = memory[i]
        for d in range(plan.devices):
            if plan.memory_churn and rng.random() < plan.memory_churn:
                used[d] = rng.randrange(0, _MEMORY_TOTAL // 2, 1 << 20)
        return registry_pb2.HeartbeatRequest(
            node_id=node_id(i),
            sequence=sequence,
            devices=[
                registry_pb2.DeviceStatus(
                    index=d,
                    health=common_pb2.DEVICE_HEALTH_HEALTHY,
                    memory_used_bytes=used[d],
                )
                for d in range(plan.devices)
            ],
        )

    def registration_done() -> None:
        if result.registered + result.unregistered == len(plan.agent_ids):
            result.register_seconds = clock() - started
            all_registered.set()

    async def agent(i: int) -> None:
        nonlocal interval_s
        stub = stubs[i % len(stubs)]
        # Like a real agent (services/agent/lease.py): a failed registration is retried with
        # capped backoff; every failed attempt is counted and reported.
        backoff = 0.1
        async with gate:
            for attempt in range(_REGISTER_ATTEMPTS):
                sent_at = clock()
                try:
                    resp = await stub.RegisterNode(_register_request(i, plan.devices), timeout=30.0)
                    break
                except grpc.aio.AioRpcError as exc:
                    result.register_errors[exc.code().name] += 1
                    if attempt + 1 == _REGISTER_ATTEMPTS or exc.code() in _NO_RETRY:
                        result.unregistered += 1
                        registration_done()
                        return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            result.register_latencies_s.append(clock() - sent_at)
            result.registered += 1
            registration_done()
        interval_s = resp.heartbeat_interval_ms / 1000
        due = t0 + interval_s * i / plan.agents_total
        while due < clock():  # the first free slot after registering
            due += interval_s
        sequence = 0
        while not window or due < window[1]:
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            sequence += 1
            request = heartbeat_request(i, sequence)
            sent_at = clock()
            in_window = bool(window) and window[0] <= sent_at < window[1]
            try:
                await stub.Heartbeat(request, timeout=10.0)
            except grpc.aio.AioRpcError as exc:
                if in_window:
                    result.errors[exc.code().name] += 1
                else:
                    result.errors_outside_window[exc.code().name] += 1
            else:
                if in_window:
                    result.latencies_s.append(clock() - sent_at)
            if in_window:
                result.sent += 1
                result.send_lag_s.append(sent_at - due)
            due += interval_s

    async def coordinate() -> None:
        await all_registered.wait()
        conn.send(("registered", result.registered, interval_s))
        w_start, w_end = await loop.run_in_executor(None, conn.recv)
        window.extend([w_start + skew, w_end + skew])
        await asyncio.sleep(max(0.0, window[0] - clock()))
        cpu0, wall0 = self_cpu_seconds(), clock()
        await asyncio.sleep(max(0.0, window[1] - clock()))
        result.cpu_s, result.window_s = self_cpu_seconds() - cpu0, clock() - wall0

    started = clock()
    agents = [asyncio.create_task(agent(i)) for i in plan.agent_ids]
    coordinator = asyncio.create_task(coordinate())
    await asyncio.gather(coordinator, *agents)
    for ch in channels:
        await ch.close()
    return result


def _load_process(plan: LoadPlan, conn: multiprocessing.connection.Connection) -> None:
    try:
        result = asyncio.run(_run_load(plan, conn))
        conn.send(("done", result))
    except BaseException as exc:
        conn.send(("failed", repr(exc)))
        raise


# -- orchestration --------------------------------------------------------------------------
@dataclass
class Measured:
    loads: list[LoadResult]
    registry_cpu_s: float
    window_s: float
    interval_s: float
    states: Counter[str]
    lost_log_lines: int


def _list_states(address: str) -> Counter[str]:
    states: Counter[str] = Counter()
    with signed_channel(
        address, signer("operator"), options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        token = ""
        while True:
            resp = stub.ListNodes(
                registry_pb2.ListNodesRequest(
                    page=common_pb2.PageRequest(page_size=1000, page_token=token)
                ),
                timeout=30.0,
            )
            for node in resp.nodes:
                states[registry_pb2.NodeState.Name(node.state)] += 1
            token = resp.page.next_page_token
            if not token:
                return states


def _measure(args: argparse.Namespace, registry: Child) -> Measured:
    ctx = multiprocessing.get_context("spawn")
    ids = list(range(args.agents))
    spawned = time.time()
    t0_wall = spawned + 1.0  # the load processes need about a second to start
    workers: list[
        tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]
    ] = []
    for w in range(args.load_processes):
        parent_end, child_end = ctx.Pipe()
        plan = LoadPlan(
            registry=registry.address,
            agent_ids=ids[w :: args.load_processes],
            agents_total=args.agents,
            devices=args.devices,
            channels=args.channels,
            memory_churn=args.memory_churn,
            register_concurrency=args.register_concurrency,
            seed=args.seed + w,
            t0_wall=t0_wall,
        )
        process = ctx.Process(target=_load_process, args=(plan, child_end), daemon=True)
        process.start()
        workers.append((process, parent_end))
    try:
        intervals = []
        for _, conn in workers:
            message = _receive(conn, timeout_s=240.0)
            if message[0] != "registered":
                raise RuntimeError(f"load generator: {message}")
            intervals.append(float(message[2]))
        interval_s = max(intervals)
        print(
            f"registered {args.agents} agents {time.time() - spawned:.1f} s after starting the "
            f"load process(es); heartbeat "
            f"interval {interval_s:g} s",
            flush=True,
        )
        w_start = time.time() + args.warmup
        w_end = w_start + args.duration
        for _, conn in workers:
            conn.send((w_start, w_end))
        time.sleep(max(0.0, w_start - time.time()))
        cpu0, wall0 = cpu_seconds(registry.pid), time.perf_counter()
        print(f"warm-up {args.warmup:g} s done; measuring {args.duration:g} s ...", flush=True)
        time.sleep(max(0.0, w_end - time.time()))
        registry_cpu, window = cpu_seconds(registry.pid) - cpu0, time.perf_counter() - wall0
        loads: list[LoadResult] = []
        for worker, conn in workers:
            message = _receive(conn, timeout_s=60.0)
            if message[0] != "done":
                raise RuntimeError(f"load generator failed: {message}")
            loads.append(message[1])
            worker.join(timeout=10)
    finally:
        for worker, _ in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)
    states = _list_states(registry.address)
    lost_lines = registry.log_path.read_text(errors="replace").count('"node.lost"')
    return Measured(loads, registry_cpu, window, interval_s, states, lost_lines)


def _receive(conn: multiprocessing.connection.Connection, timeout_s: float) -> tuple[Any, ...]:
    if not conn.poll(timeout_s):
        raise TimeoutError(f"no word from the load generator in {timeout_s:g} s")
    message: tuple[Any, ...] = conn.recv()
    return message


def report(args: argparse.Namespace, m: Measured) -> tuple[str, bool]:
    lat = [x * 1e3 for r in m.loads for x in r.latencies_s]
    lag = [x * 1e3 for r in m.loads for x in r.send_lag_s]
    reg = [x * 1e3 for r in m.loads for x in r.register_latencies_s]
    errors: Counter[str] = Counter()
    reg_errors: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    for r in m.loads:
        errors.update(r.errors)
        outside.update(r.errors_outside_window)
        reg_errors.update(r.register_errors)
    sent = sum(r.sent for r in m.loads)
    expected_rate = args.agents / m.interval_s
    achieved = len(lat) / m.window_s
    load_cpu = sum(r.cpu_s for r in m.loads)
    load_window = max(r.window_s for r in m.loads)
    p99 = percentile(lat, 99)
    ready = m.states.get("NODE_STATE_READY", 0)
    goal_latency = p99 <= GOAL_P99_MS
    goal_rate = achieved >= 0.98 * expected_rate
    goal_ready = ready == args.agents and not errors and m.lost_log_lines == 0
    lines = [
        "",
        f"{args.agents} agents x {args.devices} devices, heartbeat every {m.interval_s:g} s, "
        f"memory churn {args.memory_churn:g}, {args.channels} channel(s) in "
        f"{args.load_processes} load process(es); window {m.window_s:.1f} s",
        f"registration: {sum(r.registered for r in m.loads)} ok, "
        f"{sum(r.unregistered for r in m.loads)} gave up; failed attempts (retried) "
        f"{dict(reg_errors) or 0}; "
        f"slowest process {max(r.register_seconds for r in m.loads):.1f} s, "
        f"p50 {percentile(reg, 50):.1f} ms, p99 {percentile(reg, 99):.1f} ms",
        "",
        table(
            ["heartbeat", "value"],
            [
                ["sent in window", str(sent)],
                ["ok", str(len(lat))],
                ["errors", str(sum(errors.values())) + (f" {dict(errors)}" if errors else "")],
                [
                    "errors outside window",
                    str(sum(outside.values())) + (f" {dict(outside)}" if outside else ""),
                ],
                ["expected / s", f"{expected_rate:.1f}"],
                ["achieved / s", f"{achieved:.1f}  ({achieved / expected_rate:.3f}x)"],
                ["latency p50 ms", f"{percentile(lat, 50):.2f}"],
                ["latency p90 ms", f"{percentile(lat, 90):.2f}"],
                ["latency p99 ms", f"{p99:.2f}  (goal <= {GOAL_P99_MS:g})"],
                ["latency max ms", f"{max(lat) if lat else float('nan'):.2f}"],
                ["send lag p99 ms", f"{percentile(lag, 99):.2f}  (load generator lateness)"],
                ["registry CPU", f"{m.registry_cpu_s / m.window_s * 100:.1f}% of one core"],
                ["load generator CPU", f"{load_cpu / load_window * 100:.1f}% of one core"],
                [
                    "registry CPU per heartbeat",
                    f"{m.registry_cpu_s / max(len(lat), 1) * 1e6:.0f} us",
                ],
            ],
        ),
        "",
        f"after the run: ListNodes {dict(sorted(m.states.items()))}; "
        f"node.lost log lines {m.lost_log_lines}",
    ]
    lines.append(
        f"goals: p99 <= {GOAL_P99_MS:g} ms {'met' if goal_latency else 'NOT met'}; "
        f"rate >= 0.98x expected {'met' if goal_rate else 'NOT met'}; "
        f"all {args.agents} READY, no errors, none LOST {'met' if goal_ready else 'NOT met'}"
    )
    # Performance goals are reported; only a correctness failure (errors, a node not READY)
    # makes the exit status non-zero.
    return "\n".join(lines), goal_ready


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.registry_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents (1000)")
    parser.add_argument("--devices", type=int, default=8, help="devices per agent (8)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measurement window in seconds (60)"
    )
    parser.add_argument(
        "--warmup", type=float, default=4.0, help="heartbeat seconds before the window (4)"
    )
    parser.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        default=None,
        help="the registry's POCGRID_HEARTBEAT_INTERVAL_MS (default: registry default, 2000)",
    )
    parser.add_argument(
        "--lease-ttl-ms",
        type=int,
        default=None,
        help="the registry's POCGRID_LEASE_TTL_MS (default: registry default, 10000)",
    )
    parser.add_argument(
        "--memory-churn",
        type=float,
        default=1.0,
        help="chance per device per heartbeat that its memory_used_bytes changed (1.0: every "
        "device, every heartbeat, the heaviest flush load; 0: idle devices)",
    )
    parser.add_argument(
        "--channels", type=int, default=8, help="gRPC connections per load process (8)"
    )
    parser.add_argument("--load-processes", type=int, default=1, help="load processes (1)")
    parser.add_argument(
        "--register-concurrency", type=int, default=32, help="RegisterNode calls in flight (32)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for memory figures (1)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory and logs")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.devices < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--agents and --devices must be >= 1, --duration > 0, --warmup >= 0")
    if args.channels < 1 or args.load_processes < 1 or not 0 <= args.memory_churn <= 1:
        parser.error("--channels and --load-processes must be >= 1, --memory-churn in 0..1")

    run_dir = Path(tempfile.mkdtemp(prefix="pocgrid-bench-registry-"))
    nats = NatsServer(run_dir / "nats")
    children: list[Child] = []
    try:
        nats.start()
        env = {"POCGRID_NATS_URL": nats.url, "POCGRID_DATA_DIR": str(run_dir / "data")}
        if args.heartbeat_interval_ms is not None:
            env["POCGRID_HEARTBEAT_INTERVAL_MS"] = str(args.heartbeat_interval_ms)
        if args.lease_ttl_ms is not None:
            env["POCGRID_LEASE_TTL_MS"] = str(args.lease_ttl_ms)
        registry = spawn("registry", ["-m", "services.registry"], env, run_dir)
        children.append(registry)
        wait_ready([registry], run_dir)
        print(
            f"registry {registry.address} (pid {registry.pid}), nats {nats.url}, "
            f"{os.cpu_count()} CPUs; registering {args.agents} agents ...",
            flush=True,
        )
        measured = _measure(args, registry)
    finally:
        stop(children)
        nats.stop()
        if args.keep:
            print(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    text, ok = report(args, measured)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
