"""Measured accuracy of the real models on every emulated chip, at every precision it runs.

Starts a nats-server, a registry and agent processes (``python -m services.agent``, a few
chips at a time), sends each real model's held-out samples through every agent with RunTask
(``services.evaluator.accuracy.measure_chip_accuracy``) and prints, per model, a table of
accuracy by chip and precision beside the fp32 CPU reference, then per precision the spread
across chips (the emulation rounds the same way on every chip of a precision, so a spread
above zero would mean a chip's runtime changed the numerics).

    .venv/bin/python -m bench.model_accuracy [--chips all|a,b] [--models all|a,b] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._util import Child, signer, spawn, stop, table, wait_ready
from devmesh.nats_server import NatsServer
from pocgrid.catalog import PRECISIONS, Catalog, Chip, default_catalog
from pocgrid.v1 import agent_pb2, agent_pb2_grpc
from services.core.mesh_channel import signed_aio_channel
from services.evaluator.accuracy import PrecisionAccuracy, fp32_reference, measure_chip_accuracy
from services.evaluator.realmodels import RealModel, load_real_model, real_model_names

TENANT = (("x-pocgrid-tenant", "bench"),)


def _pick(value: str, known: Sequence[str], what: str) -> list[str]:
    if value == "all":
        return list(known)
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise SystemExit(f"--{what}: unknown {unknown} (known: {', '.join(known)})")
    return chosen


async def _measure_agent(
    address: str, chip: Chip, catalog: Catalog, models: list[RealModel], refs: dict[str, Any]
) -> list[tuple[str, PrecisionAccuracy]]:
    out = []
    # Work on an agent comes from the scheduler or the evaluator: this plays the evaluator.
    async with signed_aio_channel(address, signer("evaluator")) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)

        async def call(request: agent_pb2.RunTaskRequest) -> agent_pb2.RunTaskResponse:
            response: agent_pb2.RunTaskResponse = await stub.RunTask(
                request, metadata=TENANT, timeout=300
            )
            return response

        for real in models:
            for result in await measure_chip_accuracy(
                call,
                real.model,
                real.samples,
                chip=chip,
                catalog=catalog,
                reference=refs[real.card.name],
                task_prefix="bench",
            ):
                out.append((real.card.name, result))
    return out


def _cell(r: PrecisionAccuracy) -> str:
    if r.accuracy is None:
        return "refused"
    return f"{100 * r.accuracy:.1f}"


def report(
    models: list[RealModel], results: list[tuple[str, PrecisionAccuracy]], chips: list[str]
) -> str:
    lines = []
    for real in models:
        mine = [r for name, r in results if name == real.card.name]
        ref = mine[0].reference_accuracy if mine else real.card.fp32_accuracy
        lines.append(
            f"\n{real.card.name} ({real.card.scenario}; {real.card.metric}; "
            f"{real.samples.count} held-out samples): fp32 CPU reference {100 * ref:.1f} %"
        )
        used = [p for p in PRECISIONS if any(r.precision == p for r in mine)]
        rows = []
        for chip in chips:
            by_p = {r.precision: r for r in mine if r.chip == chip}
            rows.append([chip, *(_cell(by_p[p]) if p in by_p else "-" for p in used)])
        lines.append(table(["chip", *(f"{p} %" for p in used)], rows))
        refused = [r for r in mine if r.accuracy is None]
        if refused:
            lines.append(
                f"refused ({len(refused)}): {', '.join(f'{r.chip} {r.precision}' for r in refused)}"
                f"; e.g. {refused[0].reason}"
            )
        spread_rows = []
        for p in used:
            at = [r for r in mine if r.precision == p and r.accuracy is not None]
            accs = [r.accuracy for r in at if r.accuracy is not None]
            agree = [r.agreement for r in at if r.agreement is not None]
            if not accs:
                continue
            spread_rows.append(
                [
                    p,
                    str(len(at)),
                    f"{100 * min(accs):.1f}",
                    f"{100 * max(accs):.1f}",
                    f"{100 * (min(accs) - ref):+.2f}",
                    f"{min(r.correct or 0 for r in at) - round(ref * real.samples.count):+d}",
                    f"{100 * min(agree):.1f}",
                ]
            )
        lines.append(
            table(
                [
                    "precision",
                    "chips",
                    "min %",
                    "max %",
                    "vs fp32 ref (pts)",
                    "samples vs ref",
                    "agreement %",
                ],
                spread_rows,
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", default="all", help="emulatable chip slugs, or all")
    parser.add_argument("--models", default="all", help="real model names, or all")
    parser.add_argument("--parallel", type=int, default=3, help="agents running at once (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    catalog = default_catalog()
    emulatable = [c.name for c in catalog.chips if c.emulatable]
    chips = _pick(args.chips, emulatable, "chips")
    models = [load_real_model(n) for n in _pick(args.models, real_model_names(), "models")]
    refs = {m.card.name: fp32_reference(m.model, m.samples) for m in models}
    run_dir = Path(tempfile.mkdtemp(prefix="pocgrid-bench-accuracy-"))
    nats = NatsServer(run_dir / "nats")
    children: list[Child] = []
    results: list[tuple[str, PrecisionAccuracy]] = []
    started = time.monotonic()
    try:
        nats.start()
        env = {"POCGRID_NATS_URL": nats.url, "POCGRID_DATA_DIR": str(run_dir / "data")}
        registry = spawn("registry", ["-m", "services.registry"], env, run_dir)
        children.append(registry)
        wait_ready([registry], run_dir)
        for start in range(0, len(chips), max(1, args.parallel)):
            group = chips[start : start + max(1, args.parallel)]
            agents = [
                spawn(
                    f"agent-{chip}",
                    ["-m", "services.agent", "--chip", chip, "--devices", "1",
                     "--node-id", f"acc-{chip}", "--registry", registry.address],
                    env,
                    run_dir,
                )
                for chip in group
            ]  # fmt: skip
            children.extend(agents)
            wait_ready(agents, run_dir)

            async def measure_group(agents: list[Child] = agents, group: list[str] = group) -> None:
                found = await asyncio.gather(
                    *(
                        _measure_agent(a.address, catalog.chip(c), catalog, models, refs)
                        for a, c in zip(agents, group, strict=True)
                    )
                )
                for part in found:
                    results.extend(part)

            asyncio.run(measure_group())
            stop(agents)
            print(f"measured {', '.join(group)} ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        stop(children)
        nats.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        print(json.dumps([{"model": n, **r.to_dict()} for n, r in results], indent=2))
    else:
        print(report(models, results, chips))
        print(f"\nwall {time.monotonic() - started:.0f} s; numerics: {results[0][1].numerics}")


if __name__ == "__main__":
    main()
