"""Container health probe: ``python -m pocgrid.healthcheck [HOST:PORT]``.

Exits 0 when the server answers SERVING on the standard gRPC health service. Without an
argument it probes this container's own POCGRID_LISTEN port on loopback. When POCGRID_CA_FILE is
set (a gateway with POCGRID_TLS_CERT_FILE) it probes over TLS, verified against that CA. Written
in Python so the image needs no separately downloaded probe binary.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pocgrid.client import gateway_channel


def probe(address: str, timeout_s: float = 3.0, *, ca_file: str | None = None) -> bool:
    try:
        with gateway_channel(address, ca_file) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
    except grpc.RpcError:
        return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        address = argv[1]
    else:
        port = os.environ.get("POCGRID_LISTEN", "127.0.0.1:50051").rpartition(":")[2]
        address = f"127.0.0.1:{port}"
    return 0 if probe(address, ca_file=os.environ.get("POCGRID_CA_FILE") or None) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
