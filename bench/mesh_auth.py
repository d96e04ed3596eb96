"""What service-to-service authentication costs: one unary call with and without it, side by
side, in one run.

    (a) bare         the tenant as a bare header; the server's interceptor checks nothing (what
                     every service did before the signed tokens)
    (b) signed       the caller puts its token in the metadata itself (the gateway's way: a
                     look-up in the signer's per-tenant cache) and the server verifies it
                     (services/core/service_tokens, its cache of checked tokens)
    (c) interceptor  the same token added by services/core/mesh_channel's client interceptor
                     (how tools and tests sign); a grpc.aio client interceptor has a cost of its
                     own, which the services' channels pay anyway for tracing

Both servers run the services' own ServerInterceptor (tracing off, as in a service with no
exporter) around the same servicer: ``RegistryService.GetChip`` answering from a dict. Client
and servers share this process and its event loop, so each figure is the whole round trip's
Python cost on one core. The paths are interleaved round by round (the starting path rotates)
and figures are medians over rounds; the ratio is the median of the per-round ratios.

Below the round trips, the primitives a cache miss costs: signing one token, verifying one
(Ed25519 signature and claims), and the cached look-ups the hot path does instead.

    .venv/bin/python -m bench.mesh_auth [--rounds 10] [--calls 2000] [--concurrency 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bench._util import median, table
from pocgrid.metadata import TENANT_METADATA_KEY
from pocgrid.v1 import registry_pb2, registry_pb2_grpc
from services.core import mesh_identity, telemetry
from services.core.interceptors import ServerInterceptor
from services.core.logging import configure_logging
from services.core.mesh_auth import MeshCredentials
from services.core.mesh_channel import signed_aio_channel
from services.core.service_tokens import TOKEN_METADATA_KEY

AUDIENCE = "pocgrid.v1.RegistryService"
TENANT = (("x-pocgrid-tenant", "bench"),)
assert TENANT[0][0] == TENANT_METADATA_KEY


_CHIP = registry_pb2.GetChipResponse(
    chip=registry_pb2.Chip(name="ascend-910b2", vendor_family="ascend")
)


async def _get_chip(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _CHIP.SerializeToString()


async def _server(interceptor: ServerInterceptor) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[interceptor])
    # Bytes in, bytes out: the servicer costs the same on both paths and next to nothing.
    handler = grpc.method_handlers_generic_handler(
        AUDIENCE, {"GetChip": grpc.unary_unary_rpc_method_handler(_get_chip)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


Metadata = Callable[[], tuple[tuple[str, str], ...]]


async def _round(
    stub: registry_pb2_grpc.RegistryServiceStub, metadata: Metadata, calls: int, concurrency: int
) -> tuple[float, float]:
    """Calls per second over ``calls`` calls, ``concurrency`` in flight, and the CPU time this
    process (client and server both) spent per call, in us: the CPU figure does not move with
    what else the machine runs, the rate does."""
    request = registry_pb2.GetChipRequest(name="ascend-910b2")
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await stub.GetChip(request, metadata=metadata())

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    n = per_worker * concurrency
    return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e6


def _per_call_us(fn: Callable[[], object], n: int, repeats: int = 7) -> float:
    """CPU us per call (process time: what the machine's other load does not inflate)."""
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(n):
            fn()
        samples.append((time.process_time() - started) / n * 1e6)
    return median(samples)


def primitives(creds: MeshCredentials, server: MeshCredentials) -> list[list[str]]:
    signer, verifier = creds.signer, server.verifier
    counter = iter(range(10**9))
    now = int(time.time())

    def fresh() -> str:
        # A distinct tenant per call: neither cache can answer.
        return signer.sign(f"t{next(counter)}", False, AUDIENCE, now)

    tokens = [fresh() for _ in range(2000)]
    pending = iter(tokens)
    cached = signer.token("bench", False, AUDIENCE)
    verifier.verify(cached, AUDIENCE)
    rows = [
        ["sign a token (cache miss)", f"{_per_call_us(fresh, 500):.1f}"],
        [
            "verify a token (cache miss)",
            f"{_per_call_us(lambda: verifier.verify(next(pending), AUDIENCE), 250):.1f}",
        ],
        [
            "token from the signer's cache",
            f"{_per_call_us(lambda: signer.token('bench', False, AUDIENCE), 20000):.2f}",
        ],
        [
            "verify from the verifier's cache",
            f"{_per_call_us(lambda: verifier.verify(cached, AUDIENCE), 20000):.2f}",
        ],
    ]
    return rows


async def run(rounds: int, calls: int, concurrencies: list[int]) -> None:
    keys = Path(tempfile.mkdtemp(prefix="pocgrid-bench-keys-"))
    mesh_identity.generate(keys)
    client = MeshCredentials.from_dir(keys, "gateway")
    server_creds = MeshCredentials.from_dir(keys, "registry")
    provider = telemetry.create_tracer_provider("bench", env={})
    bare_server, bare_addr = await _server(ServerInterceptor(provider, "bench"))
    signed_server, signed_addr = await _server(
        ServerInterceptor(provider, "bench", verifier=server_creds.verifier)
    )
    channels = {
        "bare": grpc.aio.insecure_channel(bare_addr),
        "signed": grpc.aio.insecure_channel(signed_addr),
        "interceptor": signed_aio_channel(signed_addr, client.signer),
    }
    stubs = {k: registry_pb2_grpc.RegistryServiceStub(ch) for k, ch in channels.items()}
    signer = client.signer
    metadata: dict[str, Metadata] = {
        "bare": lambda: TENANT,
        "signed": lambda: ((TOKEN_METADATA_KEY, signer.token("bench", False, AUDIENCE)),),
        "interceptor": lambda: TENANT,
    }
    rows = []
    try:
        for k, stub in stubs.items():  # warm: connections, caches
            await _round(stub, metadata[k], 200, 4)
        for concurrency in concurrencies:
            rates: dict[str, list[float]] = {k: [] for k in stubs}
            cpus: dict[str, list[float]] = {k: [] for k in stubs}
            ratios: dict[str, list[float]] = {"signed": [], "interceptor": []}
            paths = list(stubs)
            for r in range(rounds):
                order = paths[r % len(paths) :] + paths[: r % len(paths)]
                got = {k: await _round(stubs[k], metadata[k], calls, concurrency) for k in order}
                for k, (rate, cpu) in got.items():
                    rates[k].append(rate)
                    cpus[k].append(cpu)
                for k in ratios:
                    ratios[k].append(got[k][0] / got["bare"][0])
            bare = median(rates["bare"])
            for k in ("signed", "interceptor"):
                rate = median(rates[k])
                rows.append(
                    [
                        str(concurrency),
                        k,
                        f"{bare:,.0f}",
                        f"{rate:,.0f}",
                        f"{median(ratios[k]):.3f}",
                        f"{median(cpus['bare']):.0f}",
                        f"{median(cpus[k]):.0f}",
                        f"{median(cpus[k]) - median(cpus['bare']):+.0f}",
                    ]
                )
    finally:
        for ch in channels.values():
            await ch.close()
        await bare_server.stop(0)
        await signed_server.stop(0)
    print(f"GetChip round trips, {rounds} rounds x {calls} calls, medians:")
    print(
        table(
            [
                "in flight",
                "path",
                "bare calls/s",
                "path calls/s",
                "path/bare",
                "bare CPU us/call",
                "path CPU us/call",
                "CPU added",
            ],
            rows,
        )
    )
    print("\nPrimitives (CPU time, median of 7 batches):")
    print(table(["operation", "CPU us"], primitives(client, server_creds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,32")
    args = parser.parse_args()
    configure_logging("bench", "console", "warning")  # no per-RPC debug lines in the timing
    asyncio.run(run(args.rounds, args.calls, [int(c) for c in args.concurrency.split(",")]))


if __name__ == "__main__":
    main()
