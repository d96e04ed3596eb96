"""The layer contracts (pyproject.toml, [tool.importlinter]) hold, cover every service, and break
when a bad import is added.

The breaking cases run ``lint-imports`` on a copy of the repository's Python files with one
import injected, so they prove the checker that ``make test`` runs, with the real contracts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pocgrid", "services", "gateway", "devmesh", "tools", "bench")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_service_package_is_under_the_contracts():
    services = sorted(
        f"services.{p.name}"
        for p in (ROOT / "services").iterdir()
        if (p / "__init__.py").exists() and p.name != "core"
    )
    contracts = _contracts()
    assert sorted(contracts["services-independent"]["modules"]) == services
    for cid in ("core", "gateway", "devmesh"):
        forbidden = set(contracts[cid]["forbidden_modules"])
        assert set(services) <= forbidden, cid


def test_the_repository_keeps_its_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def copy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's Python files and pyproject.toml, nothing else (fast to copy)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for package in PACKAGES:
        for src in (ROOT / package).rglob("*.py"):
            dst = root / src.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return root


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("pocgrid/client.py", "import services.core.errors", "pocgrid (the installable SDK)"),
        ("pocgrid/catalog/loader.py", "import devmesh.launcher", "pocgrid (the installable SDK)"),
        ("services/adapter/servicer.py", "import services.registry", "services do not import"),
        ("gateway/forwarder.py", "import services.metering.servicer", "the gateway imports"),
        ("services/core/bus.py", "import services.agent", "services.core is below"),
    ],
)
def test_a_bad_import_breaks_the_checker(
    copy_root: Path, module: str, bad_import: str, contract: str
) -> None:
    path = copy_root / module
    original = path.read_text()
    # Inside a function, as a lazy import would be: the checker must see those too.
    path.write_text(original + f"\n\ndef _injected() -> None:\n    {bad_import}\n")
    try:
        result = _lint(copy_root)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    # A bad import low down breaks the contracts of every layer above it too; the one it breaks
    # directly must be among them.
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout
