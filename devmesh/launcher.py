"""Start and stop the whole mesh on this machine as child processes.

Order: nats-server -> registry -> scheduler, metering, adapter -> evaluator -> gateway -> agents
(one per emulatable chip type). Stop is the reverse. Every child runs in its own session (Ctrl-C
on the terminal reaches only the launcher, which then stops children in order) and watches its
parent (POCGRID_PARENT_PID): if the launcher is killed outright, children notice and shut down,
and the kernel's parent-death signal covers nats-server. Once up, ``supervise`` restarts a
service or agent that died, on its old address, after a back-off that doubles per quick death.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devmesh.nats_server import NatsServer, NatsServerError
from devmesh.tls import TlsFiles, make_gateway_tls
from pocgrid.catalog import default_catalog
from pocgrid.healthcheck import probe as health_ok
from pocgrid.meshstate import MeshState, ProcessInfo
from services.core import mesh_identity
from services.core.apikeys import ADMIN_SUFFIX
from services.core.mesh_auth import MeshCredentials
from services.core.mesh_channel import signed_channel
from services.core.nats_auth import IDENTITIES, new_passwords

BACKENDS = ("scheduler", "metering", "adapter", "evaluator")
#: Backends started after the others, since they call them: the evaluator reads metering's
#: price book and finds the pool in the registry.
LATE_BACKENDS = ("evaluator",)
_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_S = (0.5, 30.0)
"""First and longest wait before restarting a child that died; doubles per quick death."""
STABLE_AFTER_S = 60.0
"""A child that ran this long before dying is restarted after the first back-off again."""


class MeshStartError(RuntimeError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Child:
    info: ProcessInfo
    proc: subprocess.Popen[bytes]
    args: list[str]
    extra: dict[str, str]
    address_file: Path
    started_at: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0
    restart_at: float | None = None
    log_file: Path | None = None
    """Where it logs, when not logs/<name>.log."""


@dataclass
class LocalMesh:
    run_dir: Path
    chips: Sequence[str] = ()
    devices_per_agent: int = 8
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    api_key: str = field(default_factory=lambda: "pg-dev-" + secrets.token_urlsafe(18))
    admin_key: str = field(default_factory=lambda: "pg-admin-" + secrets.token_urlsafe(24))
    """An admin key of tenant ``dev`` for this run (``pocgrid admin ...``): a bootstrap key of
    the gateway, like ``api_key``, so the store never holds it and a new run makes a new one."""
    admin_key_file: Path | None = None
    """Where the supervisor wrote ``admin_key`` (0600) for the CLI; None: not written."""
    log: Callable[[str], None] = lambda _msg: None
    waiting: Callable[[str], None] = lambda _msg: None
    """Called while start-up waits, with what it waits for."""
    data_dir: Path | None = None
    """Databases and JetStream streams persist here across down/up; None: scratch in run_dir."""
    nats: NatsServer | None = None
    _nats_child: _Child | None = None
    children: list[_Child] = field(default_factory=list)
    gateway: str = ""
    registry: str = ""
    """HOST:PORT of the registry (the operator's way to the agents' addresses)."""
    openai: str = ""
    """HOST:PORT of the gateway's OpenAI-compatible HTTP endpoint."""
    tls: bool = False
    """Serve the gateway's gRPC and HTTP ports over TLS, with a CA made for this run."""
    tls_files: TlsFiles | None = None
    nats_passwords: dict[str, str] = field(default_factory=new_passwords)
    """A fresh password per NATS identity for this run (services/core/nats_auth.py)."""

    # -- start ------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise

    @property
    def databases_dir(self) -> Path:
        return (self.run_dir if self.data_dir is None else self.data_dir) / "data"

    @property
    def keys_dir(self) -> Path:
        """The mesh's identity keys (services/core/mesh_identity.py): made at the first start,
        kept with the data so a restarted mesh's services still know each other."""
        return (self.run_dir if self.data_dir is None else self.data_dir) / "mesh-keys"

    def operator(self) -> MeshCredentials:
        """The operator identity's credentials, to call a service port of this mesh directly."""
        return MeshCredentials.from_dir(self.keys_dir, "operator")

    @property
    def nats_dir(self) -> Path:
        return (self.run_dir if self.data_dir is None else self.data_dir) / "nats"

    def _start(self, deadline: float) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "addr").mkdir(parents=True, exist_ok=True)
        # Each agent gets an identity of its own (agent-<chip>, its child's name), so one
        # agent's key cannot act for another's node.
        mesh_identity.generate(
            self.keys_dir, [*mesh_identity.IDENTITIES, *(f"agent-{c}" for c in self.fleet())]
        )
        self.waiting("starting nats-server")
        self._write_nats_credentials()
        self.nats = NatsServer(self.nats_dir, passwords=self.nats_passwords)
        # nats-server cannot watch its parent; the kernel's parent-death signal covers it. It is
        # started before this process opens any gRPC channel, so preexec_fn is still safe here.
        self.nats.start(preexec_fn=_die_with_parent, start_new_session=True)
        assert self.nats.proc is not None
        self._nats_child = _Child(
            ProcessInfo("nats", self.nats.proc.pid, self.nats.url, kind="nats"),
            self.nats.proc,
            [],
            {},
            self.run_dir / "addr" / "nats",  # unused: its address is its URL
            log_file=self.nats_dir / "nats-server.log",
        )
        self.log(f"nats-server {self.nats.url} (JetStream, store {self.nats_dir / 'jetstream'})")
        registry = self._spawn("registry", ["-m", "services.registry"], {})
        self._wait_ready([registry], deadline)
        self.registry = registry.info.address
        addrs = {"POCGRID_REGISTRY_ADDR": registry.info.address}
        for wave in (
            [n for n in BACKENDS if n not in LATE_BACKENDS],
            [n for n in BACKENDS if n in LATE_BACKENDS],
        ):
            # Metering reads the gateway's keys for its tenants (usage of any other is refused).
            backends = [
                self._spawn(
                    n,
                    ["-m", f"services.{n}"],
                    {**addrs, **self._gateway_keys()} if n == "metering" else addrs,
                )
                for n in wave
            ]
            self._wait_ready(backends, deadline)
            for b in backends:
                addrs[f"POCGRID_{b.info.name.upper()}_ADDR"] = b.info.address
        # The OpenAI-compatible endpoint gets a port chosen here, not port 0, so that a restarted
        # gateway serves it where clients were told it is (as gRPC keeps its address).
        self.openai = f"127.0.0.1:{_free_port()}"
        tls_env: dict[str, str] = {}
        if self.tls:
            self.tls_files = make_gateway_tls(self.run_dir / "tls")
            tls_env = self.tls_files.gateway_env()
        gateway = self._spawn(
            "gateway",
            ["-m", "gateway"],
            {**addrs, **self._gateway_keys(), "POCGRID_OPENAI_LISTEN": self.openai, **tls_env},
        )
        self._wait_ready([gateway], deadline)
        self.gateway = gateway.info.address
        agents = [
            self._spawn(
                f"agent-{chip}",
                ["-m", "services.agent"],
                {
                    "POCGRID_REGISTRY_ADDR": registry.info.address,
                    "POCGRID_CHIP": chip,
                    "POCGRID_DEVICES": str(self.devices_per_agent),
                    "POCGRID_NODE_ID": f"{chip}-0",
                },
                kind="agent",
            )
            for chip in self.fleet()
        ]
        self._wait_ready(agents, deadline)
        self._wait_registered(registry.info.address, agents, deadline)

    @property
    def nats_credentials_dir(self) -> Path:
        return self.run_dir / "nats-credentials"

    def _write_nats_credentials(self) -> None:
        """One password file per identity (0600), what each child is pointed at."""
        directory = self.nats_credentials_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for user, password in self.nats_passwords.items():
            path = directory / user
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(password + "\n")

    def _nats_env(self, name: str, kind: str) -> dict[str, str]:
        """The child's NATS identity: agents share ``agent``; a service with no bus (the
        gateway, the adapter) gets no credential at all."""
        user = "agent" if kind == "agent" else name
        if user not in IDENTITIES:
            return {}
        return {
            "POCGRID_NATS_USER": user,
            "POCGRID_NATS_PASSWORD_FILE": str(self.nats_credentials_dir / user),
        }

    def _gateway_keys(self) -> dict[str, str]:
        """The development key (tenant ``dev``, for the CLI and the demo) and, as in a
        container, the tenants of ``POCGRID_API_KEYS`` / ``POCGRID_API_KEYS_FILE``."""
        inline = self.base_env.get("POCGRID_API_KEYS", "").strip().strip(",")
        ours = f"{self.api_key}=dev,{self.admin_key}=dev{ADMIN_SUFFIX}"
        return {"POCGRID_API_KEYS": f"{inline},{ours}" if inline else ours}

    def write_admin_key(self, path: Path) -> None:
        """``admin_key`` into ``path``, readable by its owner only (made so, never chmod-ed
        after the key is in it), for ``pocgrid admin ...`` against this mesh."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.admin_key + "\n")
        self.admin_key_file = path

    def fleet(self) -> list[str]:
        if self.chips:
            return list(self.chips)
        return [c.name for c in default_catalog().emulatable_chips()]

    def _spawn(
        self, name: str, args: list[str], extra: Mapping[str, str], kind: str = "service"
    ) -> _Child:
        address_file = self.run_dir / "addr" / name
        # Each process gets the mesh's public keys and its own identity's private key, and its
        # own NATS identity's password.
        extra = {
            **mesh_identity.mesh_env(self.keys_dir, name),
            **self._nats_env(name, kind),
            **extra,
        }
        proc = self._popen(name, args, extra, address_file, "127.0.0.1:0")
        info = ProcessInfo(name, proc.pid, kind=kind)
        child = _Child(info, proc, args, dict(extra), address_file)
        self.children.append(child)
        return child

    def _popen(
        self, name: str, args: list[str], extra: Mapping[str, str], address_file: Path, listen: str
    ) -> subprocess.Popen[bytes]:
        assert self.nats is not None
        address_file.unlink(missing_ok=True)
        env = {
            **self.base_env,
            "POCGRID_NATS_URL": self.nats.url,
            "POCGRID_DATA_DIR": str(self.databases_dir),
            "POCGRID_LISTEN": listen,
            "POCGRID_ADDRESS_FILE": str(address_file),
            "POCGRID_PARENT_PID": str(os.getpid()),
            "POCGRID_LOG_FORMAT": "json",
            **extra,
        }
        log = self.log_path(name).open("ab")
        # No preexec_fn here: by now this process runs gRPC threads, and Python code between
        # fork and exec is unsafe then. Children watch POCGRID_PARENT_PID instead.
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return proc

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def _wait_ready(self, children: list[_Child], deadline: float) -> None:
        pending = list(children)
        while pending:
            for child in list(pending):
                if child.proc.poll() is not None:
                    raise MeshStartError(
                        f"{child.info.name} exited with {child.proc.returncode}: "
                        f"{exit_cause(self.log_path(child.info.name))}"
                    )
                if not child.info.address and child.address_file.exists():
                    child.info.address = child.address_file.read_text().strip()
                if child.info.address and health_ok(child.info.address, ca_file=self._ca(child)):
                    pending.remove(child)
                    self.log(f"{child.info.name} {child.info.address}")
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.info.name for c in pending)
                raise MeshStartError(f"not healthy in time: {names}")
            if pending:
                self.waiting(_waiting_for([c.info.name for c in pending], len(self.children)))
                time.sleep(0.05)

    def _ca(self, child: _Child) -> str | None:
        """The CA to probe ``child`` with: the gateway's when it serves TLS."""
        if child.info.name == "gateway" and self.tls_files is not None:
            return str(self.tls_files.ca_file)
        return None

    def _wait_registered(self, registry: str, agents: list[_Child], deadline: float) -> None:
        """Every agent of this run READY in the registry (with --data-dir the registry also
        remembers the nodes of earlier runs; only these agents' addresses count)."""
        from pocgrid.v1 import registry_pb2, registry_pb2_grpc

        addresses = {a.info.address for a in agents}
        with signed_channel(registry, self.operator().signer) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            while True:
                nodes = stub.ListNodes(
                    registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY), timeout=5
                ).nodes
                ready = len(addresses & {n.agent_address for n in nodes})
                if ready >= len(addresses):
                    return
                if time.monotonic() > deadline:
                    raise MeshStartError(f"only {ready} of {len(addresses)} agents registered")
                self.waiting(f"agents registering with the registry ({ready}/{len(addresses)})")
                time.sleep(0.1)

    # -- supervision ------------------------------------------------------------------
    def _how_it_ended(self, child: _Child) -> str:
        code = child.proc.returncode
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        log = child.log_file or self.log_path(child.info.name)
        return f"exited with {code}: {exit_cause(log)}"

    def supervise(self, now: float | None = None) -> bool:
        """One round: note children that died, restart those whose back-off has passed.
        Returns whether anything changed (the caller then rewrites the state file)."""
        now = time.monotonic() if now is None else now
        changed = False
        nats = [] if self._nats_child is None else [self._nats_child]
        for child in [*nats, *self.children]:
            if child.restart_at is None:
                if child.proc.poll() is None:
                    continue
                quick = now - child.started_at < STABLE_AFTER_S
                child.quick_deaths = child.quick_deaths + 1 if quick else 1
                first, longest = RESTART_BACKOFF_S
                delay = min(longest, first * 2 ** (child.quick_deaths - 1))
                child.restart_at = now + delay
                child.info.state = "restarting"
                child.info.last_exit = self._how_it_ended(child)
                self.log(f"{child.info.name} {child.info.last_exit}; restarting in {delay:g} s")
                changed = True
            elif now >= child.restart_at:
                # The same address: the others were given it (and agents registered it).
                listen = child.info.address or "127.0.0.1:0"
                if child.info.kind == "nats":
                    # Not the parent-death signal now: Python between fork and exec is unsafe
                    # once gRPC threads run. Stop (and `pocgrid down`) still end it.
                    assert self.nats is not None
                    try:
                        self.nats.start(start_new_session=True)
                    except NatsServerError as exc:
                        child.info.last_exit = f"restart failed: {exc}"
                        child.restart_at = now + RESTART_BACKOFF_S[1]
                        changed = True
                        continue
                    assert self.nats.proc is not None
                    child.proc = self.nats.proc
                else:
                    child.proc = self._popen(
                        child.info.name, child.args, child.extra, child.address_file, listen
                    )
                child.info.pid = child.proc.pid
                child.info.restarts += 1
                child.info.state = "running"
                child.started_at = now
                child.restart_at = None
                self.log(f"{child.info.name} restarted (pid {child.proc.pid}) on {listen}")
                changed = True
        return changed

    # -- state ------------------------------------------------------------------------
    def state(self, supervisor_pid: int, status: str) -> MeshState:
        procs = [c.info for c in self.children]
        if self._nats_child is not None:
            procs.insert(0, self._nats_child.info)
        return MeshState(
            supervisor_pid=supervisor_pid,
            gateway=self.gateway,
            openai=self.openai,
            api_key=self.api_key,
            admin_key_file="" if self.admin_key_file is None else str(self.admin_key_file),
            ca_file="" if self.tls_files is None else str(self.tls_files.ca_file),
            nats_url=self.nats.url if self.nats else "",
            nats_user="operator",
            nats_password_file=str(self.nats_credentials_dir / "operator"),
            run_dir=str(self.run_dir),
            status=status,
            processes=procs,
            data_dir="" if self.data_dir is None else str(self.data_dir),
        )

    # -- stop -------------------------------------------------------------------------
    def stop(self, timeout_s: float = 15.0) -> None:
        """Agents first, then the gateway, backends, registry, and NATS last."""
        order = (
            [c for c in self.children if c.info.kind == "agent"],
            [c for c in self.children if c.info.name == "gateway"],
            [c for c in self.children if c.info.name in BACKENDS],
            [c for c in self.children if c.info.name == "registry"],
        )
        for group in order:
            _terminate([c.proc for c in group], timeout_s)
        self.children.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
            self._nats_child = None
        if self.data_dir is None:
            # Without --data-dir a run's streams and databases are scratch (each `up` starts
            # afresh); its logs stay.
            shutil.rmtree(self.nats_dir / "jetstream", ignore_errors=True)
            shutil.rmtree(self.databases_dir, ignore_errors=True)


def _terminate(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _waiting_for(names: list[str], started: int) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"waiting for {shown} to be healthy ({started - len(names)}/{started} up)"


def exit_cause(log: Path, tail_bytes: int = 16384) -> str:
    """Why a child ended, from the end of its log: the last error it logged, or the last line
    of its traceback; the log's path when neither is there."""
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - tail_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return f"no log at {log}"
    for line in reversed(lines):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                detail = record.get("error") or record.get("exception") or ""
                detail = str(detail).strip().splitlines()[-1] if detail else ""
                event = str(record.get("event", ""))
                return f"{event}: {detail}" if detail else event
            continue
        if not line.startswith(("File ", "Traceback", "^", "~")) and ":" in line:
            return line
    return f"see {log}"


def _free_port() -> int:
    """A port free on loopback now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
