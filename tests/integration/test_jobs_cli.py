"""``pocgrid jobs|queue|pool`` through the gateway, as a user runs them: each API key's tenant
submits, lists, shows and cancels its own jobs only, sees why its jobs wait, and sees the pool's
devices with another tenant's holdings unnamed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.service import GatewayServer
from pocgrid.cli.main import main
from tests.conftest import wait_for
from tests.integration.test_placement import Mesh

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "key-acme-123", "key-globex-456"


async def _run(capsys, gw: GatewayServer, key: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    argv = ["--gateway", gw.address, "--api-key", key, *args]
    code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(out: str) -> Any:
    # The services in this process log to stdout too; the CLI's JSON is one write.
    text = "\n" + out
    start = min(i for i in (text.find("\n{"), text.find("\n[")) if i >= 0) + 1
    return json.JSONDecoder().raw_decode(text, start)[0]


async def test_jobs_queue_and_pool_through_the_gateway(common, closer, capsys):
    mesh = Mesh(common, closer)
    await mesh.start_registry()
    await mesh.agent("npu-a", devices=1, speed=0.0)
    await mesh.start_scheduler()
    assert mesh.registry is not None and mesh.scheduler is not None
    gw = GatewayServer(
        common,
        GatewayConfig(
            api_keys=f"{KEY_A}=acme,{KEY_B}=globex",
            registry_addr=mesh.registry.address,
            scheduler_addr=mesh.scheduler.address,
        ),
    )
    await gw.start()
    closer.append(gw)
    base = ["--model", "Qwen2.5-7B", "--precision", "fp16", "--chip", "ascend-910b2"]
    code, out, _ = await _run(
        capsys, gw, KEY_A, "jobs", "submit", *base, "--kind", "evaluation", "--json"
    )
    assert code == 0
    held = _json(out)
    assert held["spec"]["kind"] == "evaluation" and held["state"] == "queued"

    async def running() -> bool:
        code, out, _ = await _run(capsys, gw, KEY_A, "jobs", "show", held["job_id"], "--json")
        return code == 0 and _json(out)["state"] == "running"

    await wait_for(running, within=20, what="the evaluation job running")
    code, out, _ = await _run(capsys, gw, KEY_A, "jobs", "submit", *base, "--steps", "2", "--json")
    waiting = _json(out)

    async def reason() -> str:
        _, out, _ = await _run(capsys, gw, KEY_A, "queue", "--json")
        entries = _json(out)["entries"]
        return entries[0]["pending_reason"] if entries else ""

    await wait_for(
        lambda: reason_is(reason, "InsufficientCapacity"), within=20, what="pending reason"
    )
    code, out, _ = await _run(capsys, gw, KEY_A, "queue")
    assert waiting["job_id"] in out and "InsufficientCapacity" in out
    code, out, _ = await _run(capsys, gw, KEY_B, "queue", "--json")
    assert _json(out) == {"queued_total": 1, "entries": []}

    code, out, _ = await _run(capsys, gw, KEY_B, "pool", "--json")
    (device,) = _json(out)
    assert device["node_id"] == "npu-a" and device["share_held"] == 1.0
    assert [(h["own"], h["job_id"]) for h in device["holdings"]] == [(False, "")]
    code, out, _ = await _run(capsys, gw, KEY_A, "pool")
    assert held["job_id"] in out and "100%" in out

    code, out, _ = await _run(capsys, gw, KEY_A, "jobs", "list", "--json")
    assert sorted(j["job_id"] for j in _json(out)) == sorted([held["job_id"], waiting["job_id"]])
    code, out, _ = await _run(capsys, gw, KEY_B, "jobs", "list", "--json")
    assert _json(out) == []
    # Tenant B can neither see nor cancel tenant A's job.
    code, _, err = await _run(capsys, gw, KEY_B, "jobs", "show", held["job_id"])
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = await _run(capsys, gw, KEY_B, "jobs", "cancel", held["job_id"])
    assert code == 1 and "NOT_FOUND" in err

    # A's own cancel frees the device; the waiting batch job runs and succeeds.
    code, out, _ = await _run(capsys, gw, KEY_A, "jobs", "cancel", held["job_id"], "--json")
    assert code == 0 and _json(out)["state"] == "cancelled"

    async def succeeded() -> bool:
        _, out, _ = await _run(capsys, gw, KEY_A, "jobs", "show", waiting["job_id"], "--json")
        return _json(out)["state"] == "succeeded"

    await wait_for(succeeded, within=30, what="the batch job succeeded")
    code, out, _ = await _run(capsys, gw, KEY_A, "jobs", "list", "--state", "succeeded")
    assert waiting["job_id"] in out and "2/2" in out
    # Refused at submit, with the field and the rule.
    code, _, err = await _run(capsys, gw, KEY_A, "jobs", "submit", *base, "--devices", "4")
    assert code == 1 and "FAILED_PRECONDITION" in err and "spec.devices" in err


async def reason_is(reason, code: str) -> bool:
    return await reason() == code
