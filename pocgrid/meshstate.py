"""Where a local mesh records itself, so later CLI calls (status, down) find it."""

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


@dataclass
class MeshState:
    supervisor_pid: int
    gateway: str = ""
    api_key: str = ""
    nats_url: str = ""
    run_dir: str = ""
    status: str = "starting"  # starting | ready | failed | stopping
    error: str = ""
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
        processes = [ProcessInfo(**p) for p in data.pop("processes", [])]
        return cls(processes=processes, **data)


def state_path(home: Path) -> Path:
    return home / "mesh.json"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
