"""`pocgrid up --tls`: the local gateway serves TLS with a CA made for the run, and the CLI and
an OpenAI client reach it through the CA the mesh's state names (and not without it)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from pocgrid.client import Client
from pocgrid.meshstate import MeshState
from pocgrid.v1 import gateway_pb2

pytestmark = pytest.mark.e2e


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pocgrid.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_up_tls(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "POCGRID_HOME": str(home)}
    for name in ("POCGRID_GATEWAY", "POCGRID_API_KEY", "POCGRID_CA_FILE"):
        env.pop(name, None)
    up = _cli(env, "up", "--detach", "--tls", "--json", "--chips", "ascend-910b2", "--devices", "1")
    assert up.returncode == 0, up.stderr + (home / "supervisor.log").read_text()
    info = json.loads(up.stdout)
    try:
        ca = Path(info["ca_file"])
        assert ca.is_file() and not (ca.parent / "ca-key.pem").exists()
        state = MeshState.load(home / "mesh.json")
        assert state is not None and state.ca_file == str(ca)
        # The CLI takes the CA from the mesh's state.
        status = _cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert all(s["healthy"] for s in json.loads(status.stdout)["services"])
        # The SDK the same way; and a client with no CA is refused.
        with Client.from_local_mesh(home) as pg:
            assert pg.gateway_service.WhoAmI(gateway_pb2.WhoAmIRequest()).tenant == "dev"
        refused = _cli({**env, "POCGRID_CA_FILE": os.devnull}, "chips", "--json")
        assert refused.returncode != 0
        # The OpenAI-compatible endpoint: https with the CA, refused without it.
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as http:
            client = openai.OpenAI(
                base_url=f"https://{info['openai']}/v1", api_key=info["api_key"], http_client=http
            )
            assert "Qwen2.5-7B@ascend-910b2" in [m.id for m in client.models.list()]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://{info['openai']}/v1/models", timeout=10)
    finally:
        down = _cli(env, "down")
        assert down.returncode == 0, down.stderr
