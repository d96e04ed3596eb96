"""What the gateway costs: one unary call four ways, side by side, in one run.

    (a) direct    client -> registry
    (b) bare      client -> bare byte-forwarding proxy -> registry
    (c) bare+ctx  client -> the same proxy, also passing on what any correct gateway must:
                  the deadline (capped) and a fresh W3C traceparent
    (d) gateway   client -> GatewayServer (auth, rate limit, tracing, routing) -> registry

The call is ``RegistryService.GetChip(name="ascend-910b2")``: a dictionary lookup in the
registry and an 832-byte response, so the registry's own work is small and the hops dominate.

The bare proxy (``--serve-proxy``, started by this program as a child) is a grpc.aio generic
handler that forwards the serialized request with identity serializers and returns the
serialized response: no auth, no tracing, no deadline handling; the one header it adds is the
gateway identity's signed service token (from the signer's cache, as the gateway does), without
which the registry serves nothing (docs/security.md). It is the floor
any Python gRPC forwarder pays, so "gateway vs bare" isolates what the gateway's own features
cost. Path (c) splits that cost in two: what propagating context downstream costs on any
forwarder (gRPC deadline timer, two more headers to encode, a traceparent the registry parses),
and what the gateway's own work (API-key check, token bucket, an OpenTelemetry span) adds on
top. The gateway runs with its defaults except a rate limit too high to trigger; tracing uses
the default provider with no exporter (spans are created, sampled and dropped).

Registry, proxy and gateway each run in their own process (``python -m services.registry``,
``python -m bench.gateway_overhead --serve-proxy``, ``python -m gateway``); this process is
only the asyncio load client. Paths are interleaved round by round (the starting path rotates)
so machine drift hits all paths alike; figures are medians over rounds, ratios are medians of
the per-round ratios. Besides throughput and latency, each round records the CPU time every
process used (from /proc), so the forwarding hop's CPU per call can be compared even when the
machine's cores are shared by client, hop and registry.

    .venv/bin/python -m bench.gateway_overhead [--rounds 12] [--seconds 2] [--concurrency 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench._util import (
    Child,
    cpu_seconds,
    median,
    median_interval,
    percentile,
    self_cpu_seconds,
    signer,
    spawn,
    stop,
    table,
    wait_ready,
)
from devmesh.nats_server import NatsServer
from gateway.routing import rpc_path
from pocgrid.v1 import registry_pb2
from services.core.config import CommonConfig
from services.core.mesh_auth import MeshCredentials
from services.core.service_tokens import TOKEN_METADATA_KEY, TokenSigner

METHOD = rpc_path(registry_pb2.DESCRIPTOR.services_by_name["RegistryService"], "GetChip")
CHIP = "ascend-910b2"
API_KEY = "bench-key-0123456789"
PATHS = ("direct", "bare", "bare+ctx", "gateway")
_CAP_S = CommonConfig().downstream_timeout_cap_s  # the gateway's default cap
GOAL_RATIO = 0.90  # the gateway may cost at most 10% more than the bare forwarder


# -- the bare forwarder (runs in its own process) -------------------------------------------
class _BareForwarder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every unary-unary method, forwarded as raw bytes with the gateway's service token; with
    ``propagate``, also the deadline and a new traceparent (formatted by hand: no OpenTelemetry
    SDK here)."""

    def __init__(self, channel: grpc.aio.Channel, propagate: bool, signer: TokenSigner) -> None:
        self._channel = channel
        self._signer = signer
        self._propagate = propagate
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(details.method)
        if handler is None:
            # No serializers on either side: request and response stay bytes.
            call = self._channel.unary_unary(details.method)
            audience = details.method[1:].rpartition("/")[0]
            signer = self._signer

            async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                token = signer.token("bench", False, audience)
                response: bytes = await call(request, metadata=((TOKEN_METADATA_KEY, token),))
                return response

            async def forward_with_context(
                request: bytes, context: grpc.aio.ServicerContext
            ) -> bytes:
                remaining = context.time_remaining()
                traceparent = f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"
                token = signer.token("bench", False, audience)
                response: bytes = await call(
                    request,
                    timeout=_CAP_S if remaining is None else min(remaining, _CAP_S),
                    metadata=((TOKEN_METADATA_KEY, token), ("traceparent", traceparent)),
                )
                return response

            handler = self._handlers[details.method] = grpc.unary_unary_rpc_method_handler(
                forward_with_context if self._propagate else forward
            )
        return handler


def _write_address(path: Path, address: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(address + "\n")
    tmp.replace(path)


async def _serve_until_stopped(server: grpc.aio.Server, port: int) -> None:
    """Announce the address the way services do, then serve until SIGTERM or orphaned."""
    address_file = os.environ.get("POCGRID_ADDRESS_FILE", "")
    if address_file:
        _write_address(Path(address_file), f"127.0.0.1:{port}")
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    parent = int(os.environ.get("POCGRID_PARENT_PID", "0") or 0)
    while not done.is_set():
        if parent and os.getppid() != parent:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=0.5)
    await server.stop(0.5)


async def _serve_proxy(upstream: str, propagate: bool) -> None:
    max_bytes = 4 * 1024 * 1024  # the services' default max_message_bytes
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]
    channel = grpc.aio.insecure_channel(upstream, options=options)
    server = grpc.aio.server(options=[*options, ("grpc.so_reuseport", 0)])
    # Health checks are forwarded too, so "SERVING" means the whole path works.
    signer = MeshCredentials.from_dir(Path(os.environ["POCGRID_MESH_KEYS_DIR"]), "gateway").signer
    server.add_generic_rpc_handlers((_BareForwarder(channel, propagate, signer),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await _serve_until_stopped(server, port)
    await channel.close()


# -- a collector that takes spans and drops them (for --export-spans) ------------------------
class _DiscardingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(
            len(scope.spans) for res in request.resource_spans for scope in res.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


async def _serve_otlp_sink() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    collector = _DiscardingCollector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await _serve_until_stopped(server, port)
    print(f"otlp-sink spans_received={collector.spans}", flush=True)


# -- the load client ------------------------------------------------------------------------
@dataclass
class Sample:
    """One path at one concurrency in one round."""

    calls: int
    errors: int
    seconds: float
    latencies_s: list[float]
    cpu_s: dict[str, float]  # process role -> CPU seconds used during the round

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1e3

    def cpu_us_per_call(self, role: str) -> float:
        return self.cpu_s[role] / max(self.calls, 1) * 1e6


@dataclass
class Results:
    # (concurrency, path) -> one Sample per round
    samples: dict[tuple[int, str], list[Sample]] = field(default_factory=dict)


async def _round(
    call: grpc.aio.UnaryUnaryMultiCallable,
    request: bytes,
    metadata: tuple[tuple[str, str], ...],
    concurrency: int,
    seconds: float,
    cpu_probes: dict[str, Callable[[], float]],
) -> Sample:
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    before = {role: read() for role, read in cpu_probes.items()}
    started = clock()
    stop_at = started + seconds

    async def worker() -> None:
        nonlocal errors
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            try:
                await call(request, metadata=metadata, timeout=10.0)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(clock() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - started
    cpu = {role: read() - before[role] for role, read in cpu_probes.items()}
    return Sample(len(latencies), errors, elapsed, latencies, cpu)


async def _drive(
    targets: dict[str, str],
    pids: dict[str, int],
    concurrencies: Sequence[int],
    rounds: int,
    seconds: float,
    warmup_s: float,
    direct_signer: TokenSigner,
) -> Results:
    request = registry_pb2.GetChipRequest(name=CHIP).SerializeToString()
    # The same metadata on every path, so every path sends the same bytes: the API key (the
    # gateway's) and a service token (the registry's, on the direct path).
    token = direct_signer.token("bench", False, "pocgrid.v1.RegistryService")
    metadata = (("authorization", f"Bearer {API_KEY}"), (TOKEN_METADATA_KEY, token))
    channels = {path: grpc.aio.insecure_channel(addr) for path, addr in targets.items()}
    calls = {path: ch.unary_unary(METHOD) for path, ch in channels.items()}
    probes: dict[str, Callable[[], float]] = {
        role: functools.partial(cpu_seconds, pid) for role, pid in pids.items()
    }
    probes["client"] = self_cpu_seconds
    results = Results()
    try:
        for path in PATHS:  # correctness first, then warm every hop
            got = registry_pb2.GetChipResponse.FromString(
                await calls[path](request, metadata=metadata, timeout=10.0)
            )
            if got.chip.name != CHIP:
                raise RuntimeError(f"{path}: unexpected response {got.chip.name!r}")
            await _round(calls[path], request, metadata, max(concurrencies), warmup_s, probes)
        for r in range(rounds):
            order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            for c in concurrencies:
                for path in order:
                    sample = await _round(calls[path], request, metadata, c, seconds, probes)
                    results.samples.setdefault((c, path), []).append(sample)
                    print(
                        f"  round {r + 1}/{rounds}  c={c:<3} {path:<8}"
                        f" {sample.throughput:8.0f} calls/s  p50 {sample.p(50):6.3f} ms"
                        f"  p99 {sample.p(99):6.3f} ms  errors {sample.errors}",
                        flush=True,
                    )
    finally:
        for ch in channels.values():
            await ch.close()
    return results


# -- report ---------------------------------------------------------------------------------
def _hop(path: str) -> str:
    return {"direct": "", "bare": "proxy", "bare+ctx": "proxy+ctx", "gateway": "gateway"}[path]


def report(results: Results, concurrencies: Sequence[int]) -> tuple[str, bool]:
    lines: list[str] = []
    goal_met = True
    for c in concurrencies:
        rows = []
        for path in PATHS:
            ss = results.samples[(c, path)]
            hop = _hop(path)
            rows.append(
                [
                    path,
                    f"{median([s.throughput for s in ss]):.0f}",
                    f"{median([s.p(50) for s in ss]):.3f}",
                    f"{median([s.p(99) for s in ss]):.3f}",
                    f"{median([s.cpu_us_per_call(hop) for s in ss]):.0f}" if hop else "-",
                    f"{median([s.cpu_us_per_call('registry') for s in ss]):.0f}",
                    f"{median([s.cpu_us_per_call('client') for s in ss]):.0f}",
                    str(sum(s.errors for s in ss)),
                ]
            )
        lines.append(f"\nconcurrency {c}  (medians over {len(ss)} rounds)")
        lines.append(
            table(
                [
                    "path",
                    "calls/s",
                    "p50 ms",
                    "p99 ms",
                    "hop CPU us/call",
                    "registry us/call",
                    "client us/call",
                    "errors",
                ],
                rows,
            )
        )
        d, b, x, g = (results.samples[(c, p)] for p in PATHS)

        def per_round(
            fn: Callable[[Sample, Sample], float], one: list[Sample], other: list[Sample]
        ) -> float:
            return median([fn(s1, s2) for s1, s2 in zip(one, other, strict=True)])

        def tput(one: list[Sample], other: list[Sample]) -> float:
            return per_round(lambda s1, s2: s1.throughput / s2.throughput, one, other)

        def p50(one: list[Sample], other: list[Sample]) -> str:
            return f"{per_round(lambda s1, s2: s1.p(50) - s2.p(50), one, other):+.3f} ms"

        def hop_cpu(one: list[Sample], role: str, other: list[Sample]) -> str:
            ratio = per_round(
                lambda s1, s2: s1.cpu_us_per_call(role) / s2.cpu_us_per_call("proxy"), one, other
            )
            return f"{ratio:.2f}x"

        ratios = [gs.throughput / bs.throughput for gs, bs in zip(g, b, strict=True)]
        gateway_vs_bare = median(ratios)
        lo, hi = median_interval(ratios)
        met = gateway_vs_bare >= GOAL_RATIO
        goal_met = goal_met and met
        verdict = f"(goal >= {GOAL_RATIO:.2f}: {_verdict(met, lo, hi)})"
        lines.append(
            f"gateway / bare per round: {' '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {gateway_vs_bare:.2f}, 90% bootstrap interval {lo:.2f}-{hi:.2f}"
        )
        lines.append(
            table(
                ["ratio (median of per-round)", "throughput", "adds p50", "hop CPU/call"],
                [
                    ["bare vs direct", f"{tput(b, d):.2f}x", p50(b, d), "-"],
                    ["gateway vs direct", f"{tput(g, d):.2f}x", p50(g, d), "-"],
                    [
                        "bare+ctx vs bare",
                        f"{tput(x, b):.2f}x",
                        p50(x, b),
                        hop_cpu(x, "proxy+ctx", b),
                    ],
                    ["gateway vs bare+ctx", f"{tput(g, x):.2f}x", p50(g, x), "-"],
                    [
                        "gateway vs bare",
                        f"{gateway_vs_bare:.2f}x {verdict}",
                        p50(g, b),
                        hop_cpu(g, "gateway", b),
                    ],
                ],
            )
        )
    return "\n".join(lines), goal_met


def _verdict(met: bool, lo: float, hi: float) -> str:
    """Whether the interval of the median clears the goal, or the verdict is within noise."""
    if met:
        return "met" if lo >= GOAL_RATIO else "met, within noise"
    return "NOT met" if hi < GOAL_RATIO else "NOT met, within noise"


# -- orchestration --------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> int:
    concurrencies = [int(x) for x in args.concurrency.split(",") if x.strip()]
    run_dir = Path(tempfile.mkdtemp(prefix="pocgrid-bench-gw-"))
    children: list[Child] = []
    sink: Child | None = None
    nats = NatsServer(run_dir / "nats")
    try:
        nats.start()
        base = {"POCGRID_NATS_URL": nats.url, "POCGRID_DATA_DIR": str(run_dir / "data")}
        if args.export_spans:
            # Registry and gateway both export, as in a deployment with a collector; the
            # forwarders have no SDK and export nothing.
            sink = spawn(
                "otlp-sink", ["-m", "bench.gateway_overhead", "--serve-otlp-sink"], {}, run_dir
            )
            children.append(sink)
            wait_ready([sink], run_dir)
            base["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{sink.address}"
        registry = spawn("registry", ["-m", "services.registry"], base, run_dir)
        children.append(registry)
        wait_ready([registry], run_dir)
        proxy = spawn(
            "proxy",
            ["-m", "bench.gateway_overhead", "--serve-proxy", registry.address],
            base,
            run_dir,
        )
        proxy_ctx = spawn(
            "proxy+ctx",
            ["-m", "bench.gateway_overhead", "--serve-proxy", registry.address, "--propagate"],
            base,
            run_dir,
        )
        gateway_env = {
            **base,
            "POCGRID_REGISTRY_ADDR": registry.address,
            "POCGRID_API_KEYS": f"{API_KEY}=bench",
            "POCGRID_RATE_LIMIT_PER_S": "1e9",
            "POCGRID_RATE_LIMIT_BURST": str(10**9),
        }
        gateway_args = ["-m", "gateway"]
        if args.cprofile:
            gateway_args = ["-m", "cProfile", "-o", str(args.cprofile), "-m", "gateway"]
        gateway = spawn("gateway", gateway_args, gateway_env, run_dir)
        children += [proxy, proxy_ctx, gateway]
        wait_ready([proxy, proxy_ctx, gateway], run_dir)
        print(
            f"GetChip({CHIP}) four ways; registry {registry.address}, bare proxy "
            f"{proxy.address}, bare+ctx {proxy_ctx.address}, gateway {gateway.address}; "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        print(
            f"warm-up {args.warmup:g} s per path, then {args.rounds} rounds x "
            f"{len(concurrencies)} concurrencies x {len(PATHS)} paths x {args.seconds:g} s",
            flush=True,
        )
        results = asyncio.run(
            _drive(
                {
                    "direct": registry.address,
                    "bare": proxy.address,
                    "bare+ctx": proxy_ctx.address,
                    "gateway": gateway.address,
                },
                {
                    "registry": registry.pid,
                    "proxy": proxy.pid,
                    "proxy+ctx": proxy_ctx.pid,
                    "gateway": gateway.pid,
                },
                concurrencies,
                args.rounds,
                args.seconds,
                args.warmup,
                signer("gateway"),
            )
        )
    finally:
        stop(list(reversed(children)))
        nats.stop()
        if sink is not None:
            received = re.findall(r"spans_received=(\d+)", sink.log_path.read_text())
            print(f"\nspans received by the OTLP sink: {received[-1] if received else '?'}")
        shutil.rmtree(run_dir, ignore_errors=True)
    text, goal_met = report(results, concurrencies)
    print(text)
    print(
        f"\ngoal (gateway throughput >= {GOAL_RATIO:.2f}x the bare forwarder at every "
        f"concurrency): {'met' if goal_met else 'NOT met'}"
    )
    if args.cprofile:
        _print_profile(Path(args.cprofile))
    return 0


def _print_profile(path: Path, top: int = 30) -> None:
    import pstats

    if not path.exists():
        print(f"no profile at {path}")
        return
    print(f"\ngateway cProfile ({path}), top {top} by own time:")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (default 12)")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per path per round (default 2)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds per path (default 2)"
    )
    parser.add_argument(
        "--concurrency", default="1,32", help="in-flight calls, comma-separated (default 1,32)"
    )
    parser.add_argument(
        "--cprofile",
        metavar="FILE",
        help="run the gateway under cProfile, write FILE and print its top functions",
    )
    parser.add_argument("--serve-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument(
        "--export-spans",
        action="store_true",
        help="registry and gateway export spans over OTLP to a collector that drops them "
        "(default: no exporter, as `pocgrid up` runs)",
    )
    parser.add_argument("--propagate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-otlp-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_otlp_sink:
        asyncio.run(_serve_otlp_sink())
        return 0
    if args.serve_proxy:
        asyncio.run(_serve_proxy(args.serve_proxy, args.propagate))
        return 0
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--rounds must be >= 1, --seconds > 0, --warmup >= 0")
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
