"""Which mesh a CLI command talks to: flags, then POCGRID_GATEWAY/POCGRID_API_KEY, then the
local mesh that ``pocgrid up`` recorded."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from pocgrid.meshstate import MeshState, running_mesh


class NoMeshError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    gateway: str
    api_key: str
    ca_file: str = ""
    """PEM CA bundle for a TLS gateway; empty: plaintext."""


def local_mesh() -> MeshState | None:
    return running_mesh()


def resolve(args: argparse.Namespace, *, admin: bool = False) -> Target:
    """``admin``: the command needs an admin key (``pocgrid admin ...``), so against the local
    mesh, with no key given, it takes the admin key ``pocgrid up`` wrote rather than the
    tenant key."""
    gateway = args.gateway or os.environ.get("POCGRID_GATEWAY", "")
    api_key = args.api_key or os.environ.get("POCGRID_API_KEY", "")
    ca_file = getattr(args, "ca_file", None) or os.environ.get("POCGRID_CA_FILE", "")
    state = local_mesh()
    if state is not None and state.status == "ready" and gateway in ("", state.gateway):
        gateway = gateway or state.gateway
        if not api_key and admin and state.admin_key_file:
            api_key = _read_key(state.admin_key_file)
        api_key = api_key or state.api_key
        # The local mesh's CA only for the local mesh's gateway: another gateway's certificate
        # is not signed by it.
        ca_file = ca_file or state.ca_file
    if not gateway:
        raise NoMeshError(
            "no mesh found: run `pocgrid up --detach`, or pass --gateway / set POCGRID_GATEWAY"
        )
    if not api_key:
        raise NoMeshError("no API key: pass --api-key or set POCGRID_API_KEY")
    return Target(gateway, api_key, ca_file)


def _read_key(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise NoMeshError(f"the local mesh's admin key: {exc}") from None
