"""docker-compose.yml and deploy/Dockerfile checked against the code (Docker can't run here)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import yaml

from pocgrid.catalog import default_catalog
from services.core.config import CommonConfig
from tests.unit.deploy.config_names import env_read_by, package_of

ROOT = Path(__file__).resolve().parents[3]
SERVICES = {"registry", "scheduler", "metering", "adapter", "evaluator", "gateway"}
# Set by the launcher for its own children, not meant for operators.
#: Not pocgrid's: the infrastructure the services use.
INFRA = {"nats", "postgres", "otel-collector", "jaeger"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_and_one_agent_per_emulatable_chip(compose):
    names = set(compose["services"])
    assert names >= SERVICES
    agents = {n.removeprefix("agent-") for n in names if n.startswith("agent-")}
    assert agents == {c.name for c in default_catalog().emulatable_chips()}
    assert names >= INFRA
    assert "-js" in compose["services"]["nats"]["command"]
    assert "nats-data:/data" in compose["services"]["nats"]["volumes"]


def test_compose_matches_the_compose_spec_schema(compose):
    """Validated against the compose-spec JSON schema (vendored by check-jsonschema)."""
    import json
    from importlib import resources

    import jsonschema

    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    jsonschema.validate(compose, schema)
    broken = dict(compose, services={"gateway": {"ports": "50051"}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_generated_manifests_are_current():
    from tools import gen_deploy

    assert gen_deploy.main(["--check"]) == 0, "run python -m tools.gen_deploy"


def test_no_key_or_password_is_committed(compose):
    gw = compose["services"]["gateway"]
    assert "POCGRID_API_KEYS" not in gw["environment"]
    assert gw["environment"]["POCGRID_API_KEYS_FILE"].startswith("/run/secrets/")
    assert compose["secrets"]["api_keys"]["file"].startswith("./deploy/secrets/")
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POCGRID_DB_PASSWORD:?"), "the password comes from .env"
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {".env", "deploy/secrets/"} <= set(ignored)


def test_each_bus_user_has_its_own_nats_identity(compose):
    """Services on the bus (and agents) connect as their own NATS identity with their own
    password secret; the NATS server runs the generated permissions with every password."""
    for name, svc in compose["services"].items():
        if name in INFRA:
            continue
        env = svc["environment"]
        user = "agent" if name.startswith("agent-") else name
        # The gateway hears key revocations on the bus; the adapter has no bus.
        if name == "adapter":
            assert "POCGRID_NATS_USER" not in env, name
            continue
        assert env["POCGRID_NATS_USER"] == user, name
        assert {"source": f"nats_{user}", "target": "nats_password"} in svc["secrets"], name
        assert env["POCGRID_NATS_PASSWORD_FILE"] == "/run/secrets/nats_password"
        assert compose["secrets"][f"nats_{user}"]["file"] == f"./deploy/secrets/nats/{user}"
    nats = compose["services"]["nats"]
    assert nats["command"][:2] == ["-c", "/etc/nats/nats.conf"]
    assert "./deploy/nats-auth.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert nats["env_file"] == ["deploy/secrets/nats.env"]


def test_agents_scale_without_colliding(compose):
    """`--scale agent-x=3`: no fixed node id, address or host port, so replicas differ."""
    for name, svc in compose["services"].items():
        if name.startswith("agent-"):
            env = svc["environment"]
            assert "POCGRID_NODE_ID" not in env and "POCGRID_ADVERTISE_ADDR" not in env, name
            assert "ports" not in svc and "container_name" not in svc, name


def test_wildcard_bind_advertises_the_host_address():
    from services.core.addresses import reachable_address

    assert reachable_address("10.1.2.3:50051") == "10.1.2.3:50051"
    host, _, port = reachable_address("0.0.0.0:50051").rpartition(":")
    assert port == "50051" and host not in ("0.0.0.0", "")


def test_commands_are_real_modules_with_health_checks(compose):
    for name, svc in compose["services"].items():
        if name in INFRA:
            continue
        command = svc["command"]
        assert command[:2] == ["python", "-m"], name
        assert importlib.util.find_spec(command[2]) is not None, f"{name}: {command[2]}"
        assert svc["healthcheck"]["test"][-1] == "pocgrid.healthcheck", name


def test_env_names_are_read_by_that_service(compose):
    for name, svc in compose["services"].items():
        if name in INFRA:
            continue
        known = env_read_by(package_of(name))
        for var in svc.get("environment", {}):
            if var.startswith("POCGRID_"):
                assert var in known, f"{name}: {var} is not read by {package_of(name)}.config"


def test_addresses_point_at_listening_services(compose):
    def port_of(svc: dict) -> str:
        return svc["environment"]["POCGRID_LISTEN"].rpartition(":")[2]

    for name, svc in compose["services"].items():
        for var, value in svc.get("environment", {}).items():
            if var.endswith("_ADDR"):
                host, _, port = str(value).rpartition(":")
                assert host in compose["services"], f"{name}: {var} -> unknown host {host}"
                assert port == port_of(compose["services"][host]), f"{name}: {var} port"
    gw_env = compose["services"]["gateway"]["environment"]
    for backend in SERVICES - {"gateway"}:
        assert f"POCGRID_{backend.upper()}_ADDR" in gw_env


def test_database_urls_name_the_postgres_service(compose):
    for name, svc in compose["services"].items():
        for var, value in svc.get("environment", {}).items():
            if var.endswith("_DATABASE_URL"):
                assert value.startswith("postgresql+asyncpg://"), name
                assert f"@postgres:5432/{name}" in value, name
                assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_config_values_in_compose_validate(compose):
    """Each service's environment builds its config classes without error."""
    from gateway.config import GatewayConfig
    from services.agent.config import AgentConfig
    from services.registry.config import RegistryConfig

    for name, svc in compose["services"].items():
        if name in INFRA:
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


def test_each_container_gets_its_own_mesh_key_only(compose):
    """Every pocgrid container reads all public keys and holds its identity's private key."""
    for name, svc in compose["services"].items():
        if name in INFRA:
            continue
        identity = "agent" if name.startswith("agent-") else name
        # (Its NATS password, nats_<identity>, is checked with the NATS identities.)
        mesh = [s for s in svc["secrets"] if isinstance(s, dict) and s["source"].startswith("mesh")]
        assert {s["source"] for s in mesh} == {f"mesh_key_{identity}"}, name
        key = mesh[0]
        env = svc["environment"]
        assert env["POCGRID_MESH_PRIVATE_KEY_FILE"] == f"/run/secrets/{key['target']}", name
        assert any(v.endswith(f":{env['POCGRID_MESH_KEYS_DIR']}:ro") for v in svc["volumes"]), name
        assert compose["secrets"][f"mesh_key_{identity}"]["file"].startswith("./deploy/secrets/")
