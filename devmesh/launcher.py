"""Start and stop the whole mesh on this machine as child processes.

Order: nats-server -> registry -> scheduler, metering, adapter, evaluator -> gateway -> agents
(one per emulatable chip type). Stop is the reverse. Every child runs in its own session (Ctrl-C
on the terminal reaches only the launcher, which then stops children in order) and watches its
parent (POCGRID_PARENT_PID): if the launcher is killed outright, children notice and shut down,
and the kernel's parent-death signal covers nats-server.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devmesh.nats_server import NatsServer
from pocgrid.catalog import default_catalog
from pocgrid.healthcheck import probe as health_ok
from pocgrid.meshstate import MeshState, ProcessInfo

BACKENDS = ("scheduler", "metering", "adapter", "evaluator")
_PR_SET_PDEATHSIG = 1


class MeshStartError(RuntimeError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Child:
    info: ProcessInfo
    proc: subprocess.Popen[bytes]
    address_file: Path | None = None


@dataclass
class LocalMesh:
    run_dir: Path
    chips: Sequence[str] = ()
    devices_per_agent: int = 8
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    api_key: str = field(default_factory=lambda: "pg-dev-" + secrets.token_urlsafe(18))
    log: Callable[[str], None] = lambda _msg: None
    nats: NatsServer | None = None
    children: list[_Child] = field(default_factory=list)
    gateway: str = ""

    # -- start ------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            self._start(deadline)
        except BaseException:
            self.stop()
            raise

    def _start(self, deadline: float) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "addr").mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(self.run_dir / "nats")
        # nats-server cannot watch its parent; the kernel's parent-death signal covers it. It is
        # started before this process opens any gRPC channel, so preexec_fn is still safe here.
        self.nats.start(preexec_fn=_die_with_parent, start_new_session=True)
        self.log(f"nats-server {self.nats.url} (JetStream)")
        registry = self._spawn("registry", ["-m", "services.registry"], {})
        self._wait_ready([registry], deadline)
        addrs = {"POCGRID_REGISTRY_ADDR": registry.info.address}
        backends = [self._spawn(n, ["-m", f"services.{n}"], addrs) for n in BACKENDS]
        self._wait_ready(backends, deadline)
        for b in backends:
            addrs[f"POCGRID_{b.info.name.upper()}_ADDR"] = b.info.address
        gateway = self._spawn(
            "gateway", ["-m", "gateway"], {**addrs, "POCGRID_API_KEYS": f"{self.api_key}=dev"}
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
        self._wait_registered(registry.info.address, len(agents), deadline)

    def fleet(self) -> list[str]:
        if self.chips:
            return list(self.chips)
        return [c.name for c in default_catalog().emulatable_chips()]

    def _spawn(
        self, name: str, args: list[str], extra: Mapping[str, str], kind: str = "service"
    ) -> _Child:
        assert self.nats is not None
        address_file = self.run_dir / "addr" / name
        address_file.unlink(missing_ok=True)
        env = {
            **self.base_env,
            "POCGRID_NATS_URL": self.nats.url,
            "POCGRID_DATA_DIR": str(self.run_dir / "data"),
            "POCGRID_LISTEN": "127.0.0.1:0",
            "POCGRID_ADDRESS_FILE": str(address_file),
            "POCGRID_PARENT_PID": str(os.getpid()),
            "POCGRID_LOG_FORMAT": "json",
            **extra,
        }
        log = (self.run_dir / "logs" / f"{name}.log").open("ab")
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
        child = _Child(ProcessInfo(name, proc.pid, kind=kind), proc, address_file)
        self.children.append(child)
        return child

    def _wait_ready(self, children: list[_Child], deadline: float) -> None:
        pending = list(children)
        while pending:
            for child in list(pending):
                if child.proc.poll() is not None:
                    raise MeshStartError(
                        f"{child.info.name} exited with {child.proc.returncode}; see "
                        f"{self.run_dir / 'logs' / (child.info.name + '.log')}"
                    )
                if not child.info.address and child.address_file and child.address_file.exists():
                    child.info.address = child.address_file.read_text().strip()
                if child.info.address and health_ok(child.info.address):
                    pending.remove(child)
                    self.log(f"{child.info.name} {child.info.address}")
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.info.name for c in pending)
                raise MeshStartError(f"not healthy in time: {names}")
            if pending:
                time.sleep(0.05)

    def _wait_registered(self, registry: str, count: int, deadline: float) -> None:
        from pocgrid.v1 import registry_pb2, registry_pb2_grpc

        with grpc.insecure_channel(registry) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            while True:
                nodes = stub.ListNodes(
                    registry_pb2.ListNodesRequest(state=registry_pb2.NODE_STATE_READY), timeout=5
                ).nodes
                if len(nodes) >= count:
                    return
                if time.monotonic() > deadline:
                    raise MeshStartError(f"only {len(nodes)} of {count} agents registered")
                time.sleep(0.1)

    # -- state ------------------------------------------------------------------------
    def state(self, supervisor_pid: int, status: str) -> MeshState:
        procs = [c.info for c in self.children]
        if self.nats is not None and self.nats.proc is not None:
            procs.insert(0, ProcessInfo("nats", self.nats.proc.pid, self.nats.url, kind="nats"))
        return MeshState(
            supervisor_pid=supervisor_pid,
            gateway=self.gateway,
            api_key=self.api_key,
            nats_url=self.nats.url if self.nats else "",
            run_dir=str(self.run_dir),
            status=status,
            processes=procs,
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
        # A run's streams and databases are scratch (each `up` starts afresh); its logs stay.
        shutil.rmtree(self.run_dir / "nats" / "jetstream", ignore_errors=True)
        shutil.rmtree(self.run_dir / "data", ignore_errors=True)


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
