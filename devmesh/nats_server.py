"""A nats-server child process with JetStream on a random port (no port races: the server picks
its port and reports it through ``--ports_file_dir``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from services.core.nats_auth import MAX_PAYLOAD_BYTES, server_authorization

# Debian installs the binary in /usr/sbin, which a non-root PATH may lack.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin")


class NatsServerError(RuntimeError):
    pass


def find_nats_server() -> str:
    found = shutil.which("nats-server")
    if found:
        return found
    for d in _EXTRA_DIRS:
        candidate = Path(d) / "nats-server"
        if candidate.exists():
            return str(candidate)
    raise NatsServerError(
        "nats-server not found: run scripts/ensure_nats_server.sh (Debian's nats-server package)"
    )


class NatsServer:
    def __init__(
        self,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        *,
        passwords: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        """``passwords``: identity -> password; the server then admits only those identities,
        each with its permissions (services/core/nats_auth.py). None: no authentication.
        ``config_file``: run with this config instead (the deployment's, in its tests)."""
        self.passwords = None if passwords is None else dict(passwords)
        self.config_file = config_file
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="pocgrid-nats-")) if data_dir is None else data_dir
        )
        self.host = host
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0, **popen_kwargs: object) -> None:
        store = self.data_dir / "jetstream"
        ports_dir = self.data_dir / "ports"
        store.mkdir(parents=True, exist_ok=True)
        ports_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "nats-server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                find_nats_server(),
                "-c",
                str(self.config_file or self._write_config()),
                "-a",
                self.host,
                "-p",
                # A restart (the supervisor's, or a test's NATS outage) keeps the port clients
                # reconnect to; a first start lets the server choose.
                str(self.port) if self.port else "-1",
                "-js",
                "-sd",
                str(store),
                "--ports_file_dir",
                str(ports_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **popen_kwargs,  # type: ignore[call-overload]
        )
        log.close()
        ports_file = ports_dir / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.proc.returncode}; see "
                    f"{self.data_dir / 'nats-server.log'}"
                )
            if ports_file.exists():
                try:
                    nats_urls = json.loads(ports_file.read_text())["nats"]
                except (ValueError, KeyError):
                    nats_urls = []
                if nats_urls:
                    self.port = int(nats_urls[0].rsplit(":", 1)[1])
                    if _accepts(self.host, self.port):
                        return
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server not ready within {timeout_s}s")

    def _write_config(self) -> Path:
        """The server's config file: the payload limit and, with passwords, who may connect
        and what each may do. JSON is valid nats-server config syntax, and quotes every
        subject ("$JS.API..." unquoted would read as a variable). Mode 0600: it holds the
        passwords."""
        config: dict[str, object] = {"max_payload": MAX_PAYLOAD_BYTES}
        if self.passwords is not None:
            config["authorization"] = server_authorization(self.passwords)
        path = self.data_dir / "nats-server.conf"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)
        return path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
