"""The local mesh as a user meets it: checks before start, progress, tenants from
POCGRID_API_KEYS, the README's code example, restarts, status with the registry down, and
--data-dir across down/up. Each mesh runs one agent of one device to stay fast."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import nats
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pocgrid.client import Client, NoLocalMeshError
from pocgrid.meshstate import MeshState, pid_alive
from pocgrid.natsclient import connect_options
from pocgrid.v1 import (  # noqa: F401  (registered for descriptor_pool look-ups)
    adapter_pb2,
    agent_pb2,
    common_pb2,
    evaluator_pb2,
    metering_pb2,
    registry_pb2,
    scheduler_pb2,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "registry", "scheduler", "metering", "adapter", "evaluator"]
BARE_TENANT = (("x-pocgrid-tenant", "acme"), ("x-pocgrid-role", "admin"))


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "POCGRID_HOME": str(home), **extra}
    for name in ("POCGRID_GATEWAY", "POCGRID_API_KEY", "POCGRID_API_KEYS", "POCGRID_TRACE_FILE"):
        if name not in extra:
            env.pop(name, None)
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocgrid.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _state(home: Path) -> MeshState:
    state = MeshState.load(home / "mesh.json")
    assert state is not None
    return state


def _pid_of(home: Path, name: str) -> int:
    return next(p.pid for p in _state(home).processes if p.name == name)


def _status(env: dict[str, str], *flags: str) -> tuple[int, dict]:
    result = _cli(env, *flags, "status", "--json", timeout=60)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _no_port_usable_without_credentials(state: MeshState) -> None:
    """Every RPC of every service process of the mesh, called as issue 13's attacker did (a
    bare tenant header, no key): UNAUTHENTICATED; the same port's health check: SERVING."""
    pool = descriptor_pool.Default()
    hosted = {
        "registry": ["RegistryService", "NodeLeaseService"],
        "scheduler": ["SchedulerService"],
        "metering": ["MeteringService"],
        "adapter": ["AdapterService"],
        "evaluator": ["EvaluatorService"],
    }
    checked = []
    for proc in state.processes:
        services = ["AgentService"] if proc.kind == "agent" else hosted.get(proc.name, [])
        if not services:
            continue  # nats, and the gateway (the public door: API keys)
        with grpc.insecure_channel(proc.address) as ch:
            for service in services:
                for method in pool.FindServiceByName(f"pocgrid.v1.{service}").methods:
                    path = f"/pocgrid.v1.{service}/{method.name}"
                    call = (ch.unary_stream if method.server_streaming else ch.unary_unary)(path)
                    with pytest.raises(grpc.RpcError) as err:
                        result = call(b"", metadata=BARE_TENANT, timeout=10)
                        if method.server_streaming:
                            list(result)
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING, proc.name
        checked.append(proc.name)
    assert set(checked) == {*hosted, "agent-ascend-910b2"}


def test_up_refuses_a_bad_fleet_before_starting_anything(tmp_path: Path):
    home = tmp_path / "home"
    env = _env(home)
    for args, cause in [
        (["--chips", "nope"], "unknown chip 'nope'"),
        (["--chips", "bi-v100,bi-v100"], "'bi-v100' is listed twice"),
        (["--chips", "enflame-s60"], "'enflame-s60' cannot be emulated"),
        (["--devices", "0"], "--devices: must be 1..64"),
        (["--detach", "--devices", "65"], "--devices: must be 1..64"),
    ]:
        result = _cli(env, "up", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert cause in result.stderr, (args, result.stderr)
        assert ".log" not in result.stderr, result.stderr  # the cause, not a log path
    assert not (home / "mesh.json").exists()
    assert not (home / "runs").exists()  # nothing started, nothing written

    timeout = _cli(env, "--timeout", "0", "status")
    assert timeout.returncode == 2 and "must be a positive number of seconds" in timeout.stderr
    assert _cli(env, "--timeout", "-3", "chips").returncode == 2
    version = _cli(env, "--version")
    assert version.returncode == 0 and re.fullmatch(r"pocgrid \S+\n", version.stdout)
    down = _cli(env, "down")
    assert down.returncode == 0 and "no local mesh is running" in down.stdout
    with pytest.raises(NoLocalMeshError, match="pocgrid up --detach"):
        Client.from_local_mesh(home)


def test_tenants_readme_example_restarts_and_status_without_registry(tmp_path: Path):
    home = tmp_path / "home"
    env = _env(home, POCGRID_API_KEYS="acme-secret=acme")
    up = _cli(env, "up", "--detach", "--chips", "ascend-910b2", "--devices", "1")
    assert up.returncode == 0, up.stderr + (home / "supervisor.log").read_text()
    # Not a terminal: progress comes as plain lines, one per change.
    assert "... waiting for registry" in up.stdout and "\r" not in up.stdout
    stopped: list[int] = []
    try:
        # The keys of POCGRID_API_KEYS are the local gateway's tenants, as in a container.
        who = _cli(env, "--api-key", "acme-secret", "whoami", "--json")
        assert who.returncode == 0, who.stderr
        assert json.loads(who.stdout)["tenant"] == "acme"

        # The README's example, as written, against this mesh.
        readme = (ROOT / "README.md").read_text()
        example = readme.split("### From code", 1)[1].split("```python\n", 1)[1].split("```")[0]
        assert "Client.from_local_mesh()" in example
        run = subprocess.run(
            [sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert "ascend-910b2" in run.stdout

        # No service port of the mesh is usable without credentials; health stays open.
        _no_port_usable_without_credentials(_state(home))

        # A service that dies is restarted, on its address, and status says so.
        metering = _pid_of(home, "metering")
        os.kill(metering, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            code, data = _status(env)
            procs = {p["name"]: p for p in data.get("processes", [])}
            if code == 0 and procs["metering"]["restarts"] == 1:
                break
            assert time.monotonic() < deadline, data
            time.sleep(0.3)
        assert procs["metering"]["pid"] != metering
        assert procs["metering"]["last_exit"] == "killed by SIGKILL"
        assert all(p["restarts"] == 0 for n, p in procs.items() if n != "metering")
        assert all(s["healthy"] for s in data["services"])

        # The registry does not answer: status still shows every service, and why no nodes.
        registry = _pid_of(home, "registry")
        os.kill(registry, signal.SIGSTOP)
        stopped.append(registry)
        code, data = _status(env, "--timeout", "2")
        assert code == 1
        health = {s["name"]: s["healthy"] for s in data["services"]}
        assert set(health) == set(SERVICES)
        assert not health["registry"]
        assert all(ok for name, ok in health.items() if name != "registry")
        assert data["nodes"] == [] and "DEADLINE_EXCEEDED" in data["nodes_error"]
        os.kill(registry, signal.SIGCONT)
        stopped.remove(registry)

        # The gateway does not answer: status says so, with the supervisor's record.
        gateway = _pid_of(home, "gateway")
        os.kill(gateway, signal.SIGSTOP)
        stopped.append(gateway)
        code, data = _status(env, "--timeout", "1")
        assert code == 1 and "DEADLINE_EXCEEDED" in data["gateway_error"]
        assert {p["name"] for p in data["processes"]} >= {"nats", "gateway", *SERVICES}
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        pids = [_state(home).supervisor_pid, *(p.pid for p in _state(home).processes)]
        down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    assert not [p for p in pids if pid_alive(p)]


async def _stream_messages(
    state: MeshState, until: Callable[[dict[str, int]], bool], within_s: float = 30.0
) -> dict[str, int]:
    """The registry and scheduler streams' message counts, once ``until`` holds: the outbox
    relays publish after the RPC that wrote the event has returned, so a count read at once
    can still miss it. Read with the mesh's operator credential: its NATS admits no one else
    but the services."""
    nc = await nats.connect(
        state.nats_url, **connect_options(state.nats_user, state.nats_password_file)
    )
    try:
        js = nc.jetstream()
        counts: dict[str, int] = {}

        async def read() -> bool:
            for name in ("POCGRID_REGISTRY", "POCGRID_SCHEDULER"):
                counts[name] = (await js.stream_info(name)).state.messages
            return until(counts)

        await wait_for(read, within=within_s, every=0.2, what="the outbox events in the streams")
        return dict(counts)
    finally:
        await nc.close()


async def _anonymous(url: str) -> None:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    await nc.close()


def test_data_dir_keeps_databases_and_streams_across_down_and_up(tmp_path: Path):
    home, data = tmp_path / "home", tmp_path / "data"
    env = _env(home)
    up = ["up", "--detach", "--json", "--chips", "bi-v100", "--devices", "1", "--data-dir"]
    first = _cli(env, *up, str(data))
    assert first.returncode == 0, first.stderr + (home / "supervisor.log").read_text()
    try:
        with Client.from_local_mesh(home) as pg:
            job = pg.scheduler.SubmitJob(
                scheduler_pb2.SubmitJobRequest(
                    spec=scheduler_pb2.JobSpec(
                        model="Qwen2.5-7B", devices=1, precision=common_pb2.PRECISION_FP16
                    ),
                    idempotency_key="data-dir-1",
                )
            ).job
        before = asyncio.run(
            _stream_messages(
                _state(home),
                lambda c: c["POCGRID_REGISTRY"] >= 1 and c["POCGRID_SCHEDULER"] >= 1,
            )
        )
        # The mesh's NATS admits only its identities: a plain client is refused at connect.
        with pytest.raises(nats.errors.Error, match="Authorization"):
            asyncio.run(_anonymous(_state(home).nats_url))
    finally:
        assert _cli(env, "down").returncode == 0
    assert (data / "data").is_dir() and (data / "nats" / "jetstream").is_dir()

    second = _cli(env, *up, str(data))
    assert second.returncode == 0, second.stderr + (home / "supervisor.log").read_text()
    try:
        with Client.from_local_mesh(home) as pg:
            jobs = pg.scheduler.ListJobs(scheduler_pb2.ListJobsRequest()).jobs
        assert job.job_id in {j.job_id for j in jobs}
        # Kept across down/up, and the second up's node registration added one more.
        asyncio.run(
            _stream_messages(
                _state(home),
                lambda c: (
                    c["POCGRID_SCHEDULER"] >= before["POCGRID_SCHEDULER"]
                    and c["POCGRID_REGISTRY"] > before["POCGRID_REGISTRY"]
                ),
            )
        )
    finally:
        assert _cli(env, "down").returncode == 0
