"""deploy/k8s rendered by kustomize and checked against the Kubernetes schemas and the code.

A real cluster is not available where this project is developed (README, "What was not run"):
what can be checked is that both kustomizations build, that every rendered object is valid for
the Kubernetes API (kubernetes-validate, strict: unknown fields fail), and that the manifests
agree with the code (every service and chip type present, env names read by the service, ports,
probes, security contexts, network policy).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pocgrid.catalog import default_catalog
from services.core.config import CommonConfig, env_name
from tests.unit.deploy.config_names import env_read_by, package_of
from tools import gen_deploy

ROOT = Path(__file__).resolve().parents[3]
K8S_VERSION = "1.30.0"
PORT = 50051


@pytest.fixture(scope="module")
def kustomize() -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "ensure_kustomize.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ in a scratch tree, with secrets made by deploy/make-secrets.sh (as an operator)."""
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(ROOT / "deploy", root / "deploy", ignore=shutil.ignore_patterns("secrets"))
    subprocess.run([str(root / "deploy" / "make-secrets.sh"), "alpha"], check=True, timeout=60)
    return root / "deploy"


def _build(kustomize: str, path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kustomize, "build", str(path)], check=True, capture_output=True, text=True, timeout=120
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def base(kustomize: str, deploy_copy: Path) -> list[dict[str, Any]]:
    return _build(kustomize, deploy_copy / "k8s" / "base")


@pytest.fixture(scope="module")
def production(kustomize: str, deploy_copy: Path) -> list[dict[str, Any]]:
    return _build(kustomize, deploy_copy / "k8s" / "overlays" / "production")


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("which", ["base", "production"])
def test_every_object_is_valid_for_the_kubernetes_api(which: str, request: pytest.FixtureRequest):
    docs = request.getfixturevalue(which)
    assert len(docs) > 20
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_broken_object(base):
    deployment = next(d for d in base if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_service_and_one_agent_statefulset_per_chip(base):
    deployments = _by_kind(base, "Deployment")
    services = _by_kind(base, "Service")
    for spec in gen_deploy.SERVICES:
        assert spec.name in deployments and spec.name in services, spec.name
        assert services[spec.name]["spec"]["ports"][0]["port"] == PORT
    statefulsets = _by_kind(base, "StatefulSet")
    chips = {c.name for c in default_catalog().emulatable_chips()}
    assert {n.removeprefix("agent-") for n in statefulsets if n.startswith("agent-")} == chips
    assert statefulsets["nats"]["spec"]["replicas"] == 3
    assert "postgres" in statefulsets


def test_pocgrid_containers_probe_grpc_and_read_only_env_they_know(base):
    config = next(
        d for d in base if d["kind"] == "ConfigMap" and "pocgrid-config" in d["metadata"]["name"]
    )
    common = {env_name(f) for f in CommonConfig.__dataclass_fields__}
    for key in config["data"]:
        assert key in common or key.startswith("OTEL_"), key
    for workload in _workloads(base):
        name = workload["metadata"]["name"]
        if name in ("nats", "postgres"):
            continue
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["grpc"]["port"] == PORT, name
        assert container["livenessProbe"]["grpc"]["service"] == "pocgrid.liveness", name
        known = env_read_by(package_of(name))
        for var in container["env"]:
            if var["name"].startswith("POCGRID_"):
                assert var["name"] in known, f"{name}: {var['name']}"
        assert container["command"][:2] == ["python", "-m"]


def test_every_container_is_non_root_read_only_and_bounded(production):
    for workload in _workloads(production):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert (
                ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
            )
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(container["resources"])


def test_hpas_scale_only_the_stateless_services(base):
    hpas = _by_kind(base, "HorizontalPodAutoscaler")
    assert set(hpas) == {s.name for s in gen_deploy.SERVICES if s.scalable}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name


def test_only_the_gateway_is_reachable_from_outside(base):
    """An ingress rule without `from` admits any source; only the gateway's policy may have it."""
    policies = list(_by_kind(base, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert deny and all("ingress" not in p["spec"] for p in deny), "default deny first"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:
                selector = policy["spec"]["podSelector"]["matchLabels"]
                assert selector == {"app.kubernetes.io/name": "gateway"}, policy["metadata"]


def test_secrets_come_from_make_secrets_not_the_repository(base):
    secrets = [d for d in base if d["kind"] == "Secret"]
    from services.core.mesh_identity import IDENTITIES

    assert {s["metadata"]["name"].rsplit("-", 1)[0] for s in secrets} == {
        "pocgrid-api-keys",
        "pocgrid-database",
        "pocgrid-mesh-public",
        *(f"pocgrid-mesh-key-{i}" for i in IDENTITIES if i != "operator"),
        "pocgrid-nats",
    }
    assert (
        not (ROOT / "deploy" / "k8s" / "base" / "secrets").exists()
        or not subprocess.run(
            ["git", "ls-files", "deploy/k8s/base/secrets"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )


def test_production_overlay_sets_namespace_and_image(production):
    for doc in production:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "pocgrid", doc["metadata"]["name"]
    images = {
        c["image"]
        for w in _workloads(production)
        if w["metadata"]["name"] not in ("nats", "postgres")
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example.com/pocgrid:0.1.0"}
    replicas = {w["metadata"]["name"]: w["spec"].get("replicas") for w in _workloads(production)}
    # Metering's replicas share its durable consumer (docs/metering.md, "Scaling").
    assert (replicas["gateway"], replicas["adapter"], replicas["metering"]) == (2, 2, 2)


def test_each_pod_holds_every_public_key_and_only_its_own_private_key(base):
    """Service-to-service tokens (docs/security.md): a pod can sign only as its own identity."""
    from services.core.mesh_identity import IDENTITIES

    public = next(d for d in base if d["metadata"]["name"].startswith("pocgrid-mesh-public"))
    assert sorted(public["data"]) == sorted(f"{i}.pub" for i in IDENTITIES)
    workloads = [d for d in base if d["kind"] in ("Deployment", "StatefulSet")]
    pocgrid = [w for w in workloads if w["metadata"]["name"] not in ("nats", "postgres")]
    assert pocgrid
    for workload in pocgrid:
        name = workload["metadata"]["name"]
        identity = "agent" if name.startswith("agent-") else name
        pod = workload["spec"]["template"]["spec"]
        secrets = {
            v["secret"]["secretName"].rsplit("-", 1)[0]
            for v in pod["volumes"]
            if "secret" in v and "mesh" in v["secret"]["secretName"]
        }
        assert secrets == {"pocgrid-mesh-public", f"pocgrid-mesh-key-{identity}"}, name
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["POCGRID_MESH_IDENTITY"] == identity, name
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert env["POCGRID_MESH_KEYS_DIR"] in mounts, name
        assert env["POCGRID_MESH_PRIVATE_KEY_FILE"].rpartition("/")[0] in mounts, name


def test_each_bus_user_has_its_own_nats_identity_and_password(base):
    """Every pod on the bus runs as its own NATS identity and mounts only that identity's
    password; the gateway and adapter (no bus) get none; the NATS servers read them all."""
    for workload in _workloads(base):
        name = workload["metadata"]["name"]
        if name in ("nats", "postgres"):
            continue
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        user = gen_deploy.nats_user(name)
        if user is None:
            assert name in ("gateway", "adapter"), name
            assert "POCGRID_NATS_USER" not in env, name
            continue
        assert env["POCGRID_NATS_USER"] == user == ("agent" if name.startswith("agent-") else name)
        (volume,) = [v for v in pod["volumes"] if v["name"] == "nats-password"]
        assert volume["secret"]["items"] == [
            {"key": gen_deploy.nats_password_variable(user), "path": "password"}
        ]
        assert env["POCGRID_NATS_PASSWORD_FILE"].startswith(
            next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "nats-password")
        )
    nats = _by_kind(base, "StatefulSet")["nats"]["spec"]["template"]["spec"]
    (server,) = nats["containers"]
    assert server["envFrom"][0]["secretRef"]["name"].startswith("pocgrid-nats")
    sources = nats["volumes"][0]["projected"]["sources"]
    names = sorted(s["configMap"]["name"] for s in sources)
    assert names[0].startswith("nats-auth-") and names[1] == "nats-config", names
    config = next(
        d for d in base if d["kind"] == "ConfigMap" and "nats-config" in d["metadata"]["name"]
    )
    assert "include ./auth.conf" in config["data"]["nats.conf"]
