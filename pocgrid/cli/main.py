"""``pocgrid``: run a local mesh and talk to any mesh through its gateway."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import grpc

from pocgrid.adapt.cli import register as register_adapt
from pocgrid.cli import admin, evaluate, queries
from pocgrid.cli.invoice import register as register_invoice
from pocgrid.cli.jobs import register as register_jobs
from pocgrid.cli.output import fail
from pocgrid.cli.prices import register as register_prices
from pocgrid.cli.target import NoMeshError
from pocgrid.cli.usage import register as register_usage
from pocgrid.comm.cli import register as register_comm
from pocgrid.perf.cli import register as register_perf
from pocgrid.sched.cli import register as register_sched


def _local_mesh_command(name: str) -> Callable[[argparse.Namespace], int]:
    """``up``/``down``/``demo`` live in ``devmesh`` (which starts services): loaded only when run,
    so the SDK's other commands never import it."""

    def run(args: argparse.Namespace) -> int:
        try:
            from devmesh import lifecycle
        except ImportError as exc:
            if not (exc.name or "").startswith("devmesh"):
                raise
            return fail(
                f"`pocgrid {name}` needs the local-mesh launcher (the devmesh package), which "
                "this install lacks; install pocgrid from a source checkout, or point the CLI "
                "at a running mesh with --gateway"
            )

        func: Callable[[argparse.Namespace], int] = getattr(lifecycle, name)
        return func(args)

    return run


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("pocgrid")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown (not installed)"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocgrid", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pocgrid {_version()}")
    parser.add_argument(
        "--gateway",
        help="gateway HOST:PORT (env POCGRID_GATEWAY; default: "
        "the local mesh started by `pocgrid up`)",
    )
    parser.add_argument("--api-key", help="API key (env POCGRID_API_KEY)")
    parser.add_argument(
        "--ca-file",
        help="PEM CA bundle to verify a TLS gateway with (env POCGRID_CA_FILE; default: the "
        "local mesh's CA when it runs with --tls, else plaintext)",
    )
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=30.0, help="per-call deadline, seconds (> 0)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start the whole mesh on this machine")
    p.add_argument("--detach", action="store_true", help="return once everything is healthy")
    p.add_argument("--json", action="store_true", help='print {"gateway", "api_key"}')
    p.add_argument("--chips", help="comma-separated chip slugs (default: every emulatable chip)")
    p.add_argument("--devices", type=int, default=8, help="devices per agent, 1..64 (default 8)")
    p.add_argument(
        "--data-dir",
        help="keep databases and JetStream streams here across down/up (default: a scratch "
        "directory per run, removed at stop)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve the gateway (gRPC and OpenAI HTTP) over TLS with a CA made for this run; "
        "the CLI and Client.from_local_mesh() find the CA in the mesh's state",
    )
    p.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_local_mesh_command("up"))

    p = sub.add_parser("down", help="stop the local mesh started with --detach")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_local_mesh_command("down"))

    p = sub.add_parser("status", help="services' health and the pool's nodes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=queries.status)

    p = sub.add_parser("chips", help="the chip catalogue")
    p.add_argument("--json", action="store_true")
    p.add_argument("--vendor", help="vendor family, e.g. ascend")
    p.add_argument("--domestic", action="store_true", help="only domestic chips")
    p.add_argument("--emulatable", action="store_true", help="only chips the pool can emulate")
    p.set_defaults(func=queries.chips)

    p = sub.add_parser("models", help="the model catalogue")
    p.add_argument("--json", action="store_true")
    p.add_argument("--kind", help="llm, vision, speech or nlp")
    p.set_defaults(func=queries.models)

    p = sub.add_parser("nodes", help="nodes in the pool")
    p.add_argument("--json", action="store_true")
    p.add_argument("--chip", help="only nodes of this chip")
    p.set_defaults(func=queries.nodes)

    p = sub.add_parser("whoami", help="the tenant behind the API key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=queries.whoami)

    p = sub.add_parser(
        "demo", help="start the mesh, evaluate an industry pack on every chip type, report, stop"
    )
    p.add_argument("--pack", default="finance", help="industry pack to evaluate (default finance)")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="where to write the HTML report (default $POCGRID_HOME/reports/<run>)",
    )
    p.add_argument("--chips", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=8, help=argparse.SUPPRESS)
    p.set_defaults(func=_local_mesh_command("demo"))

    register_jobs(sub)
    register_usage(sub)
    register_prices(sub)
    register_invoice(sub)
    register_perf(sub)
    register_adapt(sub)
    register_comm(sub)
    register_sched(sub)
    evaluate.register(sub)
    admin.register(sub)
    return parser


CLI_EXPORT_TIMEOUT_S: Final = 0.5


@contextlib.contextmanager
def _command_span(command: str) -> Iterator[None]:
    """A client span around the command when tracing is configured (file or OTLP)."""
    trace_file = os.environ.get("POCGRID_TRACE_FILE", "")
    if not trace_file and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        yield
        return
    from opentelemetry.trace import SpanKind

    from pocgrid.tracing import create_tracer_provider

    # A short export bound: the command's own work is done by the time its span is exported,
    # and an unreachable collector must not keep the user waiting at exit.
    provider = create_tracer_provider(
        "pocgrid-cli", trace_file=trace_file, export_timeout_s=CLI_EXPORT_TIMEOUT_S
    )
    with provider.get_tracer("pocgrid.cli").start_as_current_span(
        f"pocgrid {command}", kind=SpanKind.CLIENT
    ):
        yield
    provider.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with _command_span(args.command):
            return func(args)
    except NoMeshError as exc:
        return fail(str(exc))
    except grpc.RpcError as exc:
        return fail(queries.rpc_error_message(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pocgrid status | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 141


if __name__ == "__main__":
    sys.exit(main())
