"""``pocgrid up`` / ``down``: run the local mesh in the foreground or as a detached supervisor."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from devmesh.launcher import LocalMesh, MeshStartError
from devmesh.showcase import run_showcase
from devmesh.stop_signal import wait_for_stop_signal
from pocgrid.cli.output import emit_json, fail, say, table
from pocgrid.cli.target import local_mesh
from pocgrid.client import Client
from pocgrid.meshstate import MeshState, pid_alive, pocgrid_home, state_path

_START_TIMEOUT_S = 180.0


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _new_mesh(args: argparse.Namespace, home: Path, verbose: bool) -> LocalMesh:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    chips = [c for c in (args.chips or "").split(",") if c]
    return LocalMesh(
        home / "runs" / stamp,
        chips=chips,
        devices_per_agent=args.devices,
        log=(lambda m: say(f"  started {m}")) if verbose else (lambda _m: None),
    )


def supervise(args: argparse.Namespace, foreground: bool) -> int:
    """Start the mesh, record it, wait for SIGINT/SIGTERM, stop it."""
    home = pocgrid_home()
    path = state_path(home)
    running = local_mesh()
    if running is not None:
        return fail(
            f"a mesh is already running (supervisor pid {running.supervisor_pid}, "
            f"gateway {running.gateway}); run `pocgrid down` first"
        )
    # SIGTERM during start-up unwinds like Ctrl-C, so partly started children are stopped.
    signal.signal(signal.SIGTERM, _raise_exit)
    mesh = _new_mesh(args, home, verbose=foreground and not args.json)
    state = mesh.state(os.getpid(), "starting")
    state.save(path)
    try:
        try:
            mesh.start(timeout_s=_START_TIMEOUT_S)
        except MeshStartError as exc:
            state.status, state.error = "failed", str(exc)
            state.save(path)
            return fail(f"mesh did not start: {exc}")
        state = mesh.state(os.getpid(), "ready")
        state.save(path)
        if foreground:
            if args.json:
                emit_json({"gateway": mesh.gateway, "api_key": mesh.api_key})
            else:
                say(f"\npocgrid mesh is up: {len(mesh.fleet())} agents, logs in {mesh.run_dir}")
                say(f"  gateway  {mesh.gateway}\n  api key  {mesh.api_key}")
                say("Press Ctrl-C to stop.")
        wait_for_stop_signal()
    except KeyboardInterrupt:
        pass
    finally:
        state.status = "stopping"
        state.save(path)
        mesh.stop()
        path.unlink(missing_ok=True)
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
    if args.chips:
        cmd += ["--chips", args.chips]
    with (home / "supervisor.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + _START_TIMEOUT_S + 10
    path = state_path(home)
    while time.monotonic() < deadline:
        state = MeshState.load(path)
        if state is not None and state.supervisor_pid == proc.pid:
            if state.status == "ready":
                if args.json:
                    emit_json({"gateway": state.gateway, "api_key": state.api_key})
                else:
                    say(f"pocgrid mesh is up (supervisor pid {proc.pid})")
                    say(f"  gateway  {state.gateway}\n  api key  {state.api_key}")
                    say("Stop it with `pocgrid down`.")
                return 0
            if state.status == "failed":
                proc.wait(timeout=30)
                return fail(f"mesh did not start: {state.error}")
        if proc.poll() is not None:
            return fail(f"supervisor exited with {proc.returncode}; see {home / 'supervisor.log'}")
        time.sleep(0.1)
    proc.terminate()
    return fail("mesh did not become healthy in time; see " + str(home / "supervisor.log"))


def down(args: argparse.Namespace) -> int:
    path = state_path(pocgrid_home())
    state = MeshState.load(path)
    if state is None:
        return fail("no local mesh is running")
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
    still = [p.name for p in state.processes if pid_alive(p.pid)]
    if still:
        return fail("processes still running after stop: " + ", ".join(still))
    if args.json:
        emit_json({"stopped": True, "processes": len(state.processes)})
    else:
        say(f"pocgrid mesh stopped ({len(state.processes)} processes)")
    return 0


def demo(args: argparse.Namespace) -> int:
    """The main job in one command: bring the mesh up, show what it holds, take it down."""
    from pocgrid.cli import queries

    home = pocgrid_home()
    if local_mesh() is not None:
        return fail("a mesh is already running; `pocgrid down` first (the demo starts its own)")
    args.chips = getattr(args, "chips", None)
    mesh = _new_mesh(args, home, verbose=True)
    started = time.monotonic()
    say(
        "Starting the pocgrid mesh (nats-server, registry, scheduler, metering, adapter, "
        "evaluator, gateway, one agent per emulated chip type)..."
    )
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        mesh.start(timeout_s=_START_TIMEOUT_S)
        say(
            f"\nMesh up in {time.monotonic() - started:.1f} s. Through the gateway "
            f"({mesh.gateway}) with a development API key:\n"
        )
        view = argparse.Namespace(
            gateway=mesh.gateway,
            api_key=mesh.api_key,
            timeout=30.0,
            json=False,
            vendor=None,
            domestic=True,
            emulatable=False,
            kind=None,
        )
        queries.status(view)
        say("\nDomestic chips in the catalogue (public figures, with sources in --json):\n")
        queries.chips(view)
        say("\nLLMs in the model catalogue:\n")
        view.kind = "llm"
        queries.models(view)
        say(
            "\nA small CNN (real numerics, fp16 emulated) on emulated chips, then the usage "
            "metering recorded, read back through the gateway:\n"
        )
        with Client(mesh.gateway, mesh.api_key) as pg:
            rows = run_showcase(pg, "dev", say)
        say(table(["chip", "runtime", "virtual us", "bound", "kernels", "max |err| vs fp32"], rows))
    except MeshStartError as exc:
        return fail(f"mesh did not start: {exc}")
    finally:
        say("\nStopping the mesh...")
        mesh.stop()
        say(f"Stopped. Logs of this run: {mesh.run_dir / 'logs'}")
    return 0
