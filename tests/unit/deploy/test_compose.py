"""docker-compose.yml and deploy/Dockerfile checked against the code (Docker can't run here)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path

import pytest
import yaml

from pocgrid.catalog import default_catalog
from services.core.config import CommonConfig, EnvConfig, env_name

ROOT = Path(__file__).resolve().parents[3]
SERVICES = {"registry", "scheduler", "metering", "adapter", "evaluator", "gateway"}
# Set by the launcher for its own children, not meant for operators.
LAUNCHER_ONLY = {"POCGRID_ADDRESS_FILE", "POCGRID_PARENT_PID"}


def _package(service_name: str) -> str:
    if service_name == "gateway":
        return "gateway"
    if service_name.startswith("agent-"):
        return "services.agent"
    return f"services.{service_name}"


def _env_read_by(package: str) -> set[str]:
    """POCGRID_* names the package's config classes (and CommonConfig) read."""
    names = set(LAUNCHER_ONLY) | {env_name(f.name) for f in dataclasses.fields(CommonConfig)}
    module_name = f"{package}.config"
    if importlib.util.find_spec(module_name) is None:
        return names
    module = importlib.import_module(module_name)
    for obj in vars(module).values():
        if (
            isinstance(obj, type)
            and issubclass(obj, EnvConfig)
            and dataclasses.is_dataclass(obj)
            and obj.__module__ == module_name
        ):
            names.update(env_name(f.name) for f in dataclasses.fields(obj))
    return names


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_and_one_agent_per_emulatable_chip(compose):
    names = set(compose["services"])
    assert names >= SERVICES
    agents = {n.removeprefix("agent-") for n in names if n.startswith("agent-")}
    assert agents == {c.name for c in default_catalog().emulatable_chips()}
    assert "nats" in names
    assert "-js" in compose["services"]["nats"]["command"]


def test_commands_are_real_modules_with_health_checks(compose):
    for name, svc in compose["services"].items():
        if name == "nats":
            continue
        command = svc["command"]
        assert command[:2] == ["python", "-m"], name
        assert importlib.util.find_spec(command[2]) is not None, f"{name}: {command[2]}"
        assert svc["healthcheck"]["test"][-1] == "pocgrid.healthcheck", name


def test_env_names_are_read_by_that_service(compose):
    for name, svc in compose["services"].items():
        if name == "nats":
            continue
        known = _env_read_by(_package(name))
        for var in svc.get("environment", {}):
            if var.startswith("POCGRID_"):
                assert var in known, f"{name}: {var} is not read by {_package(name)}.config"


def test_addresses_point_at_listening_services(compose):
    def port_of(svc: dict) -> str:
        return svc["environment"]["POCGRID_LISTEN"].rpartition(":")[2]

    for name, svc in compose["services"].items():
        for var, value in svc.get("environment", {}).items():
            if var.endswith("_ADDR") and var != "POCGRID_ADVERTISE_ADDR":
                host, _, port = str(value).rpartition(":")
                assert host in compose["services"], f"{name}: {var} -> unknown host {host}"
                assert port == port_of(compose["services"][host]), f"{name}: {var} port"
    gw_env = compose["services"]["gateway"]["environment"]
    for backend in SERVICES - {"gateway"}:
        assert f"POCGRID_{backend.upper()}_ADDR" in gw_env
    for name, svc in compose["services"].items():
        if name.startswith("agent-"):
            env = svc["environment"]
            assert env["POCGRID_ADVERTISE_ADDR"] == f"{name}:{port_of(svc)}"


def test_config_values_in_compose_validate(compose):
    """Each service's environment builds its config classes without error."""
    from gateway.config import GatewayConfig
    from services.agent.config import AgentConfig
    from services.registry.config import RegistryConfig

    for name, svc in compose["services"].items():
        if name == "nats":
            continue
        env = {k: str(v) for k, v in svc["environment"].items()}
        CommonConfig.from_env(env)
        if name == "gateway":
            GatewayConfig.from_env(env)
        elif name == "registry":
            RegistryConfig.from_env(env)
        elif name.startswith("agent-"):
            AgentConfig.from_env(env)


def test_dockerfile_runs_as_non_root_with_health_check():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "pocgrid.healthcheck" in text
    assert "constraints.txt" in text


def test_wheel_carries_package_data(tmp_path):
    """The image installs a wheel, not the source tree: data files must be in it."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # Build from a copy: setuptools writes build/ next to the sources it builds.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("pocgrid", "services", "gateway"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("pocgrid-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data_files = {
        str(p.relative_to(ROOT))
        for pkg in ("pocgrid", "services", "gateway")
        for p in (ROOT / pkg).glob("**/data/**/*.json")
    }
    assert data_files, "no package data found in the tree"
    assert data_files <= names, sorted(data_files - names)
    assert "pocgrid/v1/registry_pb2.pyi" in names
