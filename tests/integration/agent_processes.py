"""Agent processes of their own (``python -m services.agent``) for the communicator tests:
started against a real registry, READY once it says so, stopped (terminate, then kill)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from pocgrid.v1 import registry_pb2, registry_pb2_grpc
from services.core.config import CommonConfig
from tests.conftest import service_channel, wait_for


def sqlite_common(data_dir: Path, nats_url: str, mesh_keys: Path) -> CommonConfig:
    """The communicator tests' config: SQLite only, since nothing there depends on the database
    backend (the agents keep just their usage outbox), so they do not run once per backend."""
    return CommonConfig(
        listen="127.0.0.1:0",
        nats_url=nats_url,
        data_dir=data_dir,
        log_format="console",
        shutdown_grace_s=0.5,
        mesh_keys_dir=str(mesh_keys),
    )


async def node_address(registry: str, node_id: str) -> str:
    """The node's agent address once it is READY in the registry, else ""."""
    async with service_channel(registry) as ch:
        try:
            node = (
                await registry_pb2_grpc.RegistryServiceStub(ch).GetNode(
                    registry_pb2.GetNodeRequest(node_id=node_id)
                )
            ).node
        except grpc.aio.AioRpcError:
            return ""
    return node.agent_address if node.state == registry_pb2.NODE_STATE_READY else ""


@asynccontextmanager
async def agent_processes(
    common: CommonConfig, registry: str, specs: Sequence[tuple[str, int, str]]
) -> AsyncIterator[tuple[list[str], list[asyncio.subprocess.Process]]]:
    """One agent process per ``(chip, devices, node_id)``; yields their addresses and
    processes in that order."""
    env = {
        **os.environ,
        "POCGRID_NATS_URL": common.nats_url,
        "POCGRID_LOG_FORMAT": "json",
        "POCGRID_DATA_DIR": str(common.data_dir),
        "POCGRID_MESH_KEYS_DIR": common.mesh_keys_dir,
    }
    procs: list[asyncio.subprocess.Process] = []
    try:
        for chip, devices, node_id in specs:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "services.agent",
                    "--chip",
                    chip,
                    "--devices",
                    str(devices),
                    "--node-id",
                    node_id,
                    "--registry",
                    registry,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        addresses = []
        for chip, _, node_id in specs:
            found: list[str] = []

            async def ready(node_id: str = node_id, found: list[str] = found) -> bool:
                found[:] = [await node_address(registry, node_id)]
                return bool(found[0])

            await wait_for(ready, within=90, what=f"agent process {chip} ({node_id}) READY")
            addresses.append(found[0])
        yield addresses, procs
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
                try:
                    await asyncio.wait_for(p.wait(), 10)
                except TimeoutError:
                    p.kill()
                    await p.wait()
