"""The CLI as a user runs it: `pocgrid up --detach`, status, chips, models, down, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from pocgrid.catalog import default_catalog
from pocgrid.meshstate import MeshState, pid_alive

pytestmark = pytest.mark.e2e


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocgrid.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_dead(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        time.sleep(0.1)
    return alive


def test_up_detach_status_chips_models_down(tmp_path: Path):
    trace_file = tmp_path / "spans.jsonl"
    env = {
        **os.environ,
        "POCGRID_HOME": str(tmp_path / "home"),
        "POCGRID_TRACE_FILE": str(trace_file),
    }
    env.pop("POCGRID_GATEWAY", None)
    env.pop("POCGRID_API_KEY", None)
    up = _cli(env, "up", "--detach", "--json", "--devices", "2")
    assert up.returncode == 0, up.stderr + (tmp_path / "home" / "supervisor.log").read_text()
    info = json.loads(up.stdout)
    assert set(info) == {"gateway", "api_key", "openai", "admin_key_file"}
    state = MeshState.load(tmp_path / "home" / "mesh.json")
    assert state is not None and state.status == "ready"
    pids = [state.supervisor_pid] + [p.pid for p in state.processes]
    try:
        status = _cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["gateway"] == info["gateway"]
        names = {s["name"]: s["healthy"] for s in data["services"]}
        assert names == dict.fromkeys(
            ["gateway", "registry", "scheduler", "metering", "adapter", "evaluator"], True
        )
        fleet = {c.name for c in default_catalog().emulatable_chips()}
        assert {n["chip"] for n in data["nodes"]} == fleet
        assert all(n["state"] == "READY" and n["devices"] == 2 for n in data["nodes"])
        # The gateway's OpenAI-compatible endpoint is where `up` said, with the same key.
        client = openai.OpenAI(base_url=f"http://{info['openai']}/v1", api_key=info["api_key"])
        assert "Qwen2.5-7B@ascend-910b2" in [m.id for m in client.models.list()]
        client.close()
        assert set(data["nodes"][0]) >= {"node_id", "chip", "vendor", "devices", "state"}

        chips = _cli(env, "chips", "--json")
        assert chips.returncode == 0, chips.stderr
        rows = json.loads(chips.stdout)
        assert sum(1 for r in rows if r["domestic"] and r["emulatable"]) >= 16
        assert all({"name", "vendor", "domestic", "memory_gib", "sources"} <= set(r) for r in rows)
        emulatable = _cli(env, "chips", "--emulatable", "--json")
        assert emulatable.returncode == 0, emulatable.stderr
        em_rows = json.loads(emulatable.stdout)
        assert {r["vendor_family"] for r in em_rows if r["domestic"]} >= {
            "ascend", "cambricon", "hygon", "kunlunxin", "moorethreads", "iluvatar", "metax",
            "biren", "enflame",
        }  # fmt: skip
        for r in em_rows:  # every chip sourced, every figure with a confidence
            assert r["sources"] and set(r["figure_confidence"]) >= set(r["provenance"]), r["name"]
        assert all(isinstance(r["domestic"], bool) for r in rows)

        models = _cli(env, "models", "--json")
        assert models.returncode == 0, models.stderr
        assert len(json.loads(models.stdout)) >= 24

        # The admin key `up` made: in a file of the state dir that only its owner can read, and
        # what `pocgrid admin` takes against the local mesh; the tenant key is no admin key.
        key_file = Path(info["admin_key_file"])
        assert key_file.parent == tmp_path / "home"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip() not in up.stdout + json.dumps(data)
        made = _cli(env, "admin", "tenants", "create", "acme", "--json")
        assert made.returncode == 0, made.stderr
        key = _cli(env, "admin", "keys", "create", "--tenant", "acme", "--json")
        assert key.returncode == 0, key.stderr
        key_id = json.loads(key.stdout)["key"]["key_id"]
        listed = _cli(env, "admin", "keys", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert key_id in [k["key_id"] for k in json.loads(listed.stdout)]
        plain = _cli(env, "--api-key", info["api_key"], "admin", "keys", "list")
        assert plain.returncode != 0 and "PERMISSION_DENIED" in plain.stderr, plain.stderr

        # Explicit flags point the CLI elsewhere: a wrong key is refused by the gateway.
        bad = _cli(env, "--api-key", "nope", "chips")
        assert bad.returncode != 0 and "UNAUTHENTICATED" in bad.stderr

        # One trace: CLI span -> gateway span -> registry span.
        spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
        cli_spans = [s for s in spans if s["name"] == "pocgrid chips"]
        assert cli_spans
        trace_id = cli_spans[0]["trace_id"]  # the first `chips` call; the last was refused
        services = {s["service"] for s in spans if s["trace_id"] == trace_id}
        assert {"pocgrid-cli", "gateway", "registry"} <= services
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    assert _wait_dead(pids) == []
    assert not (tmp_path / "home" / "mesh.json").exists()
    assert not (tmp_path / "home" / "admin-key").exists()


def test_foreground_up_stops_cleanly_on_ctrl_c(tmp_path: Path):
    env = {**os.environ, "POCGRID_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pocgrid.cli.main",
            "up",
            "--chips",
            "ascend-910b2,bi-v100",
            "--devices",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Press Ctrl-C" in line:
            break
    assert any("gateway" in line for line in seen), "".join(seen)
    state = MeshState.load(tmp_path / "home" / "mesh.json")
    assert state is not None
    pids = [p.pid for p in state.processes]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert _wait_dead(pids) == []
