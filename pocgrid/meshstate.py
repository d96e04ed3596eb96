"""Where a local mesh records itself, so later CLI calls (status, down) and
``Client.from_local_mesh()`` find it.

``devmesh`` writes this file; the SDK only reads it (and ``pocgrid down`` signals the processes it
names), so it lives here, below both.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def pocgrid_home(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("POCGRID_HOME") or Path.home() / ".pocgrid")


@dataclass
class ProcessInfo:
    name: str
    pid: int
    address: str = ""
    kind: str = "service"  # service | agent | nats
    restarts: int = 0
    """How often the supervisor restarted it after it died."""
    state: str = "running"  # running | restarting (dead, waiting out its back-off)
    last_exit: str = ""
    """How it last ended, e.g. "exited with 1: ConfigError: ..."; empty while it never died."""


@dataclass
class MeshState:
    supervisor_pid: int
    gateway: str = ""
    openai: str = ""
    """HOST:PORT of the gateway's OpenAI-compatible HTTP endpoint (``http://HOST:PORT/v1``)."""
    api_key: str = ""
    admin_key_file: str = ""
    """The file (0600) holding this mesh's admin key, which ``pocgrid admin ...`` uses; the key
    itself is not in this file, so nothing that shows the state shows the key."""
    ca_file: str = ""
    """PEM CA the gateway's certificate is signed by (``pocgrid up --tls``); empty: plaintext."""
    nats_url: str = ""
    nats_user: str = ""
    """The operator's NATS identity (``pocgrid admin dlq``); the services have their own."""
    nats_password_file: str = ""
    run_dir: str = ""
    status: str = "starting"  # starting | ready | failed | stopping
    error: str = ""
    progress: str = ""
    """While starting: what it waits for now (the detached `pocgrid up` shows it)."""
    data_dir: str = ""
    """Where databases and streams persist across down/up; empty: scratch, removed at stop."""
    processes: list[ProcessInfo] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.chmod(tmp, 0o600)  # it holds an API key
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> MeshState | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        try:
            processes = [ProcessInfo(**p) for p in data.pop("processes", [])]
            return cls(processes=processes, **data)
        except TypeError:  # written by another version of pocgrid
            return None


def state_path(home: Path) -> Path:
    return home / "mesh.json"


def admin_key_path(home: Path) -> Path:
    """Where ``pocgrid up`` writes the local mesh's admin key (0600)."""
    return home / "admin-key"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_mesh(home: Path | None = None) -> MeshState | None:
    """The local mesh whose supervisor is alive, or None."""
    state = MeshState.load(state_path(pocgrid_home() if home is None else home))
    if state is None or not pid_alive(state.supervisor_pid):
        return None
    return state
