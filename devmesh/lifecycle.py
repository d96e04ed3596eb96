"""``pocgrid up`` / ``down`` / ``demo``: run the local mesh in the foreground or as a detached
supervisor that restarts what dies."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from devmesh.fleet import FleetError, plan_fleet
from devmesh.launcher import LocalMesh, MeshStartError
from devmesh.nats_server import NatsServerError, find_nats_server
from devmesh.progress import Progress
from devmesh.showcase import evaluate, run_showcase, stream_completion
from devmesh.stop_signal import StopSignals
from pocgrid.cli.output import emit_json, fail, say, table
from pocgrid.cli.target import local_mesh
from pocgrid.client import Client
from pocgrid.meshstate import MeshState, admin_key_path, pid_alive, pocgrid_home, state_path

_START_TIMEOUT_S = 180.0
_SUPERVISE_EVERY_S = 0.5


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _check(args: argparse.Namespace) -> tuple[str, ...]:
    """Everything that can be known wrong before a process starts; raises FleetError."""
    chips = plan_fleet(getattr(args, "chips", None), args.devices)
    try:
        find_nats_server()
    except NatsServerError as exc:
        raise FleetError(str(exc)) from None
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise FleetError(f"--data-dir: {data_dir} exists and is not a directory")
    return chips


def _new_mesh(args: argparse.Namespace, home: Path, chips: tuple[str, ...]) -> LocalMesh:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    data_dir = getattr(args, "data_dir", None)
    return LocalMesh(
        home / "runs" / stamp,
        chips=chips,
        devices_per_agent=args.devices,
        data_dir=None if data_dir is None else Path(data_dir).resolve(),
        tls=bool(getattr(args, "tls", False)),
    )


def _announce(state: MeshState) -> None:
    """Where the mesh answers and with which key (and CA), as `up` prints it."""
    scheme = "https" if state.ca_file else "http"
    say(f"  gateway  {state.gateway}\n  api key  {state.api_key}")
    if state.admin_key_file:
        say(
            f"  admin    {Path(state.admin_key_file).read_text().strip()} "
            f"(in {state.admin_key_file}, 0600; `pocgrid admin ...` uses it)"
        )
    say(f"  openai   {scheme}://{state.openai}/v1 (OpenAI-compatible, same key)")
    if state.ca_file:
        say(f"  ca       {state.ca_file} (TLS: clients verify the gateway with it)")
    if state.data_dir:
        say(f"  data     {state.data_dir} (kept across down/up)")


def _summary(state: MeshState) -> dict[str, str]:
    summary = {"gateway": state.gateway, "api_key": state.api_key, "openai": state.openai}
    if state.admin_key_file:  # the file, not the key: a log of this output holds no admin key
        summary["admin_key_file"] = state.admin_key_file
    if state.ca_file:  # --tls: what clients verify the gateway with
        summary["ca_file"] = state.ca_file
    return summary


def supervise(args: argparse.Namespace, foreground: bool) -> int:
    """Start the mesh, record it, restart children that die until SIGINT/SIGTERM, stop it."""
    home = pocgrid_home()
    path = state_path(home)
    running = local_mesh()
    if running is not None:
        return fail(
            f"a mesh is already running (supervisor pid {running.supervisor_pid}, "
            f"gateway {running.gateway}); run `pocgrid down` first"
        )
    try:
        chips = _check(args)
    except FleetError as exc:
        return fail(str(exc))
    # SIGTERM during start-up unwinds like Ctrl-C, so partly started children are stopped.
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    mesh = _new_mesh(args, home, chips)
    mesh.write_admin_key(admin_key_path(home))
    pid = os.getpid()
    progress = Progress()
    if foreground and not args.json:
        mesh.log, mesh.waiting = (lambda m: progress.step(f"started {m}")), progress.waiting
    else:
        # Detached: the `pocgrid up` that started this process shows the progress it records.
        def record(message: str) -> None:
            state = mesh.state(pid, "starting")
            state.progress = message
            state.save(path)

        def started(message: str) -> None:
            say(message)
            record(f"started {message}")

        mesh.waiting, mesh.log = record, started
    state = mesh.state(pid, "starting")
    state.save(path)
    try:
        try:
            mesh.start(timeout_s=_START_TIMEOUT_S)
        except MeshStartError as exc:
            state.status, state.error = "failed", str(exc)
            state.save(path)
            return fail(f"mesh did not start: {exc}")
        if foreground and not args.json:
            progress.done()
            mesh.log = lambda m: progress.step(m)
        else:
            mesh.log = say
        state = mesh.state(pid, "ready")
        state.save(path)
        if foreground:
            if args.json:
                emit_json(_summary(state))
            else:
                say(f"\npocgrid mesh is up: {len(mesh.fleet())} agents, logs in {mesh.run_dir}")
                _announce(state)
                say("Press Ctrl-C to stop.")
        with StopSignals() as stop:
            while stop.wait(_SUPERVISE_EVERY_S) is None:
                if mesh.supervise():
                    state = mesh.state(pid, "ready")
                    state.save(path)
    except KeyboardInterrupt:
        pass
    finally:
        state.status = "stopping"
        state.save(path)
        mesh.stop()
        path.unlink(missing_ok=True)
        admin_key_path(home).unlink(missing_ok=True)  # the key died with the mesh's gateway
        if foreground and not args.json:
            say("pocgrid mesh stopped")
    return 0


def up(args: argparse.Namespace) -> int:
    if args.supervise or not args.detach:
        return supervise(args, foreground=not args.supervise)
    home = pocgrid_home()
    running = local_mesh()
    if running is not None:
        return fail(
            f"a mesh is already running (gateway {running.gateway}); run `pocgrid down` first"
        )
    try:
        _check(args)
    except FleetError as exc:
        return fail(str(exc))
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pocgrid.cli.main",
        "up",
        "--supervise",
        "--devices",
        str(args.devices),
    ]
    if args.chips is not None:
        cmd += ["--chips", args.chips]
    if args.data_dir is not None:
        cmd += ["--data-dir", str(Path(args.data_dir).resolve())]
    if args.tls:
        cmd.append("--tls")
    with (home / "supervisor.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    progress = Progress(sys.stderr if args.json else sys.stdout)
    deadline = time.monotonic() + _START_TIMEOUT_S + 10
    path = state_path(home)
    while time.monotonic() < deadline:
        state = MeshState.load(path)
        if state is not None and state.supervisor_pid == proc.pid:
            if state.status == "ready":
                progress.done()
                if args.json:
                    emit_json(_summary(state))
                else:
                    say(f"pocgrid mesh is up (supervisor pid {proc.pid})")
                    _announce(state)
                    say("Stop it with `pocgrid down`.")
                return 0
            if state.status == "failed":
                progress.done()
                proc.wait(timeout=30)
                return fail(f"mesh did not start: {state.error}")
            progress.waiting(state.progress or "starting")
        if proc.poll() is not None:
            progress.done()
            # A failed start is recorded, then the record removed as the supervisor exits; its
            # last line says why in that case ("error: mesh did not start: ...").
            last = _last_line(home)
            if last.startswith("error: "):
                return fail(last.removeprefix("error: "))
            return fail(f"supervisor exited with {proc.returncode}: {last}")
        time.sleep(0.1)
    proc.terminate()
    progress.done()
    return fail("mesh did not become healthy in time; see " + str(home / "supervisor.log"))


def _last_line(home: Path) -> str:
    try:
        lines = (home / "supervisor.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else f"see {home / 'supervisor.log'}"


def down(args: argparse.Namespace) -> int:
    path = state_path(pocgrid_home())
    state = MeshState.load(path)
    if state is None:
        if args.json:
            emit_json({"stopped": False, "processes": 0})
        else:
            say("no local mesh is running; nothing to stop")
        return 0
    if not pid_alive(state.supervisor_pid):
        path.unlink(missing_ok=True)
        leftovers = [p for p in state.processes if pid_alive(p.pid)]
        for p in leftovers:
            os.kill(p.pid, signal.SIGTERM)
        say(f"removed a stale mesh record; stopped {len(leftovers)} leftover processes")
        return 0
    os.kill(state.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(state.supervisor_pid):
        return fail(f"supervisor {state.supervisor_pid} did not stop within 60 s")
    # The supervisor may have restarted children after this record was read; its last
    # record (gone now) named the current ones, and it stopped them.
    still = [p.name for p in state.processes if pid_alive(p.pid)]
    if still:
        return fail("processes still running after stop: " + ", ".join(still))
    if args.json:
        emit_json({"stopped": True, "processes": len(state.processes)})
    else:
        say(f"pocgrid mesh stopped ({len(state.processes)} processes)")
    return 0


def demo(args: argparse.Namespace) -> int:
    """The main job in one command: bring the mesh up, evaluate an industry pack on every chip
    type, print the table and the recommendation, write the HTML report, take the mesh down."""
    from pocgrid.cli import queries

    home = pocgrid_home()
    if local_mesh() is not None:
        return fail("a mesh is already running; `pocgrid down` first (the demo starts its own)")
    try:
        chips = _check(args)
    except FleetError as exc:
        return fail(str(exc))
    mesh = _new_mesh(args, home, chips)
    report_dir = Path(args.report or home / "reports" / mesh.run_dir.name).resolve()
    progress = Progress()
    mesh.log, mesh.waiting = (lambda m: progress.step(f"started {m}")), progress.waiting
    started = time.monotonic()
    say(
        "Starting the pocgrid mesh (nats-server, registry, scheduler, metering, adapter, "
        "evaluator, gateway, one agent per emulated chip type)..."
    )
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    try:
        mesh.start(timeout_s=_START_TIMEOUT_S)
        progress.done()
        say(
            f"\nMesh up in {time.monotonic() - started:.1f} s. Through the gateway "
            f"({mesh.gateway}) with a development API key, the pool:\n"
        )
        view = argparse.Namespace(
            gateway=mesh.gateway, api_key=mesh.api_key, timeout=30.0, json=False
        )
        queries.status(view)
        with Client(mesh.gateway, mesh.api_key) as pg:
            rows = _demo_evaluations(pg, mesh, args.pack, report_dir)
        say(
            "\nA small CNN (real numerics, fp16 emulated) on emulated chips, then the usage "
            "metering recorded, read back through the gateway:\n"
        )
        with Client(mesh.gateway, mesh.api_key) as pg:
            cnn_rows = run_showcase(pg, "dev", say, mesh.registry, mesh.operator().signer)
        say(
            table(
                ["chip", "runtime", "virtual us", "bound", "kernels", "max |err| vs fp32"],
                cnn_rows,
            )
        )
        say(f"\nReport: {report_dir / 'report.html'} (self-contained; open it in a browser)")
        for row in rows:
            say(row)
    except MeshStartError as exc:
        progress.done()
        return fail(f"mesh did not start: {exc}")
    finally:
        say("\nStopping the mesh...")
        mesh.stop()
        say(
            f"Stopped after {time.monotonic() - started:.0f} s. Logs of this run: "
            f"{mesh.run_dir / 'logs'}"
        )
    return 0


#: Concurrencies of the demo's sweep: enough points for a curve, few enough to stay short.
_DEMO_SWEEP = (1, 8, 32, 128)


def _demo_evaluations(pg: Client, mesh: LocalMesh, pack: str, report_dir: Path) -> list[str]:
    """The pack on every chip type, then a concurrency sweep of its chat scenario on the chips
    the recommendation names (their Pareto curves), the report, and one streamed completion
    through the OpenAI-compatible endpoint; returns lines to print at the end."""
    from pocgrid.report import write_report
    from pocgrid.v1 import evaluator_pb2

    say(
        f"\nEvaluating the {pack!r} industry pack (its mix of scenarios, each with its own SLO) "
        f"on every chip type of the pool, on the agents' virtual clock:\n"
    )
    doc = evaluate(pg, evaluator_pb2.StartEvaluationRequest(scenario=pack, seed=0))
    rec = doc["recommendation"]
    picks = list(dict.fromkeys(c for c in (rec.get(k) for k in _PICKS) if c))
    llm = next((r for r in doc["results"] if r.get("kind") == "llm" and r.get("model")), None)
    more = []
    if picks and llm is not None:
        say(
            f"\nConcurrency sweep of {llm['scenario']} ({llm['model']}) on the recommended chips "
            f"({', '.join(picks)}): throughput per device against tokens/s per user:\n"
        )
        sweep = evaluate(
            pg,
            evaluator_pb2.StartEvaluationRequest(
                scenario=str(llm["scenario"]),
                model=str(llm["model"]),
                chips=picks,
                mode=evaluator_pb2.EVALUATION_MODE_SWEEP,
                sweep_concurrency=_DEMO_SWEEP,
                requests=200,
                seed=0,
            ),
            show=False,
        )
        rows = []
        for r in sweep["results"]:
            for p in r.get("curve") or []:
                rows.append(
                    [
                        r["chip"],
                        p["concurrency"],
                        f"{p['output_tokens_per_s_per_user']:.1f}",
                        f"{p['output_tokens_per_s_per_device']:.0f}",
                        "yes" if p["slo_met"] else "no",
                    ]
                )
        say(table(["chip", "clients", "tok/s per user", "tok/s per device", "SLO"], rows))
        more.append(sweep)
    write_report(doc, report_dir, more=more)
    lines = []
    domestic = rec.get("best_domestic")
    if llm is not None and domestic:
        model = f"{llm['model']}@{domestic}"
        say(
            f"\nA real HTTP client streams a completion from {model} through the gateway's "
            f"OpenAI-compatible endpoint (http://{mesh.openai}/v1), paced in real time:\n"
        )
        text, ttft, gap, virtual = stream_completion(mesh.openai, mesh.api_key, model)
        say(f"  {text.strip()[:96]}...")
        lines.append(
            f"OpenAI-compatible stream from {model}: TTFT {ttft * 1000:.0f} ms and "
            f"{gap * 1000:.1f} ms between tokens as the client saw them "
            f"(last token at {virtual * 1000:.0f} ms on the chip's virtual clock)."
        )
    return lines


_PICKS = ("cheapest", "fastest", "best_domestic")
