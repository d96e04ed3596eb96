"""Commands that read the mesh through the gateway: status, chips, models, nodes, whoami."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from pocgrid.cli.output import emit_json, say, table
from pocgrid.cli.target import local_mesh, resolve
from pocgrid.client import Client
from pocgrid.error_details import error_details
from pocgrid.v1 import common_pb2, gateway_pb2, registry_pb2


def _client(args: argparse.Namespace) -> Client:
    target = resolve(args)
    return Client(target.gateway, target.api_key, timeout_s=args.timeout, ca_file=target.ca_file)


def _all_nodes(pg: Client, **filters: Any) -> list[registry_pb2.Node]:
    nodes: list[registry_pb2.Node] = []
    token = ""
    while True:
        resp = pg.registry.ListNodes(
            registry_pb2.ListNodesRequest(
                page=common_pb2.PageRequest(page_size=1000, page_token=token), **filters
            )
        )
        nodes.extend(resp.nodes)
        token = resp.page.next_page_token
        if not token:
            return nodes


def _node_dict(node: registry_pb2.Node, vendor_by_chip: dict[str, str]) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "chip": node.chip,
        "vendor": vendor_by_chip.get(node.chip, node.vendor_family),
        "devices": len(node.devices),
        "state": registry_pb2.NodeState.Name(node.state).removeprefix("NODE_STATE_"),
        "address": node.agent_address,
        "runtime": node.runtime_name,
        "collective_library": node.collective_library,
    }


def _local_processes(gateway: str) -> list[dict[str, Any]] | None:
    """The local mesh's processes as its supervisor last recorded them, when ``gateway`` is
    that mesh's; None for any other mesh."""
    state = local_mesh()
    if state is None or state.gateway != gateway:
        return None
    return [
        {
            "name": p.name,
            "kind": p.kind,
            "pid": p.pid,
            "state": p.state,
            "restarts": p.restarts,
            "last_exit": p.last_exit,
        }
        for p in state.processes
    ]


def _gateway_down(gateway: str, error: str, as_json: bool) -> int:
    """The gateway does not answer: say so, with the local supervisor's record if it is ours."""
    processes = _local_processes(gateway)
    if as_json:
        emit_json({"gateway": gateway, "gateway_error": error, "processes": processes or []})
        return 1
    say(f"gateway {gateway} does not answer ({error})")
    if processes:
        say()
        say(
            table(
                ["process", "state", "restarts", "last exit"],
                [[p["name"], p["state"], p["restarts"], p["last_exit"]] for p in processes],
            )
        )
    return 1


def status(args: argparse.Namespace) -> int:
    """Services' health from the gateway, then the nodes from the registry; a registry that
    does not answer costs the node list only (``nodes_error`` says why)."""
    with _client(args) as pg:
        try:
            services = pg.gateway_service.CheckServices(gateway_pb2.CheckServicesRequest()).services
        except grpc.RpcError as exc:
            return _gateway_down(pg.gateway, rpc_error_message(exc), args.json)
        nodes: list[dict[str, Any]] = []
        nodes_error = ""
        try:
            chips = pg.registry.ListChips(registry_pb2.ListChipsRequest()).chips
            vendor_by_chip = {c.name: c.vendor for c in chips}
            nodes = [_node_dict(n, vendor_by_chip) for n in _all_nodes(pg)]
        except grpc.RpcError as exc:
            nodes_error = rpc_error_message(exc)
        out: dict[str, Any] = {
            "gateway": pg.gateway,
            "services": [
                {"name": s.name, "healthy": s.healthy, "status": s.status, "bus": s.bus_status}
                for s in services
            ],
            "nodes": nodes,
        }
    if nodes_error:
        out["nodes_error"] = nodes_error
    processes = _local_processes(out["gateway"])
    if processes is not None:
        out["processes"] = processes
    healthy = all(s["healthy"] for s in out["services"]) and not nodes_error
    if args.json:
        emit_json(out)
        return 0 if healthy else 1
    say(f"gateway {out['gateway']}\n")
    say(
        table(
            ["service", "healthy", "status", "bus (NATS + consumers)"],
            [
                [s["name"], "yes" if s["healthy"] else "NO", s["status"], s["bus"] or "-"]
                for s in out["services"]
            ],
        )
    )
    no_bus = [s["name"] for s in out["services"] if s["bus"] and s["bus"] != "SERVING"]
    if no_bus:
        say(
            f"\nNATS or an event consumer is down for: {', '.join(no_bus)} (they still answer "
            "RPCs; events flow again, and usage is metered, once it is back)"
        )
    if processes is not None:
        restarted = [p for p in processes if p["restarts"] or p["state"] != "running"]
        total = sum(p["restarts"] for p in processes)
        say(f"\nlocal supervisor: {len(processes)} processes, {total} restarts")
        if restarted:
            say(
                table(
                    ["process", "state", "restarts", "last exit"],
                    [[p["name"], p["state"], p["restarts"], p["last_exit"]] for p in restarted],
                )
            )
    say()
    if nodes_error:
        say(f"nodes: unavailable, the registry did not answer ({nodes_error})")
        return 1
    say(
        table(
            ["node", "chip", "vendor", "devices", "state", "runtime", "collectives"],
            [
                [
                    n["node_id"],
                    n["chip"],
                    n["vendor"],
                    n["devices"],
                    n["state"],
                    n["runtime"],
                    n["collective_library"],
                ]
                for n in nodes
            ],
        )
    )
    ready = sum(1 for n in nodes if n["state"] == "READY")
    say(
        f"\n{ready}/{len(nodes)} nodes ready, "
        f"{sum(n['devices'] for n in nodes if n['state'] == 'READY')} devices in the pool"
    )
    return 0 if healthy else 1


def chips(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        resp = pg.registry.ListChips(
            registry_pb2.ListChipsRequest(
                vendor_family=args.vendor or "",
                domestic_only=args.domestic,
                emulatable_only=args.emulatable,
            )
        )
    rows: list[dict[str, Any]] = [
        {
            "name": c.name,
            "display_name": c.display_name,
            "vendor": c.vendor,
            "vendor_family": c.vendor_family,
            "domestic": c.domestic,
            "memory_gib": c.memory_gib if c.HasField("memory_gib") else None,
            "memory_bw_gbs": c.memory_bw_gbs if c.HasField("memory_bw_gbs") else None,
            "peak_tflops": dict(c.peak_tflops),
            "software_stack": c.software_stack,
            "collective_library": c.collective_library,
            "emulatable": c.emulatable,
            "confidence": c.confidence,
            "provenance": dict(c.provenance),
            "figure_confidence": dict(c.figure_confidence),
            "estimation_methods": dict(c.estimation_methods),
            "sources": list(c.sources),
        }
        for c in resp.chips
    ]
    if args.json:
        emit_json(rows)
        return 0
    say(
        table(
            ["name", "vendor", "domestic", "memory GiB", "fp16 TFLOPS", "bw GB/s", "emulated"],
            [
                [
                    r["name"],
                    r["vendor"],
                    "yes" if r["domestic"] else "no",
                    r["memory_gib"],
                    r["peak_tflops"].get("fp16") or r["peak_tflops"].get("bf16"),
                    r["memory_bw_gbs"],
                    "yes" if r["emulatable"] else "no",
                ]
                for r in rows
            ],
        )
    )
    return 0


def models(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        resp = pg.registry.ListModels(registry_pb2.ListModelsRequest(kind=args.kind or ""))
    rows = [
        {
            "name": m.name,
            "kind": m.kind,
            "task": m.task,
            "params_b": m.params_b,
            "active_params_b": m.active_params_b if m.HasField("active_params_b") else None,
            "sources": list(m.sources),
        }
        for m in resp.models
    ]
    if args.json:
        emit_json(rows)
        return 0
    say(
        table(
            ["name", "kind", "task", "params (B)", "active (B)"],
            [
                [
                    r["name"],
                    r["kind"],
                    r["task"],
                    f"{r['params_b']:.3g}",
                    "" if r["active_params_b"] is None else f"{r['active_params_b']:.3g}",
                ]
                for r in rows
            ],
        )
    )
    return 0


def nodes(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        chip_list = pg.registry.ListChips(registry_pb2.ListChipsRequest()).chips
        found = _all_nodes(pg, chip=args.chip or "")
    rows = [_node_dict(n, {c.name: c.vendor for c in chip_list}) for n in found]
    if args.json:
        emit_json(rows)
        return 0
    # Only an admin key sees where the agents listen (docs/security.md): no empty column else.
    columns = ["node_id", "chip", "devices", "state"] + (
        ["address"] if any(r["address"] for r in rows) else []
    )
    say(table([c.removesuffix("_id") for c in columns], [[r[c] for c in columns] for r in rows]))
    return 0


def whoami(args: argparse.Namespace) -> int:
    with _client(args) as pg:
        resp = pg.gateway_service.WhoAmI(gateway_pb2.WhoAmIRequest())
    if args.json:
        emit_json(
            {"tenant": resp.tenant, "rate_limit_per_s": resp.rate_limit_per_s, "burst": resp.burst}
        )
    else:
        say(f"tenant {resp.tenant} ({resp.rate_limit_per_s:g} requests/s, burst {resp.burst})")
    return 0


def rpc_error_message(exc: grpc.RpcError) -> str:
    """``CODE [REASON]: text``: the reason is the stable name a script can match on."""
    info = error_details(exc)
    head = f"{info.code.name} [{info.reason}]" if info.reason else info.code.name
    return f"{head}: {info.message}"
