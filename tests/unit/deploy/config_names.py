"""Which POCGRID_* variables each part of the mesh reads: the deployment tests' ground truth."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util

from services.core.config import CommonConfig, EnvConfig, env_name

# Set by the launcher for its own children, not meant for operators.
LAUNCHER_ONLY = {"POCGRID_ADDRESS_FILE", "POCGRID_PARENT_PID"}


def package_of(service_name: str) -> str:
    if service_name == "gateway":
        return "gateway"
    if service_name.startswith("agent-"):
        return "services.agent"
    return f"services.{service_name}"


def env_read_by(package: str) -> set[str]:
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
