"""Service identities of the mesh and their Ed25519 keys.

Every service process has an identity (``gateway``, ``scheduler``, ``agent``, ...) and the
private key of that identity; every process knows every identity's public key. A call between
services carries a token signed with the caller's key (services/core/service_tokens.py), so a
service knows which service is calling and trusts a tenant only from one that may assert it.

On disk a key directory holds ``<identity>.pub`` (PEM SubjectPublicKeyInfo) for every identity,
and ``<identity>.key`` (PEM PKCS#8, mode 0600) where that identity's private key is meant to be:
the local mesh keeps all of them in its state directory; compose and Kubernetes give each
container the public keys and only its own private key (``POCGRID_MESH_PRIVATE_KEY_FILE``).
``python -m services.core.mesh_identity DIR`` makes a fresh set.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.core.config import ConfigError

IDENTITIES: Final = (
    "gateway",
    "registry",
    "scheduler",
    "metering",
    "adapter",
    "evaluator",
    "agent",
    # The holder of the mesh's keys acting by hand: the local launcher waiting for its agents,
    # `pocgrid demo`'s showcase, benchmarks, an operator's tools. No container is given its key.
    "operator",
)
"""The mesh's fixed identities. A verifier accepts tokens from every identity whose public key
it holds: these and the agents' own (``agent-<name>``)."""

AGENT: Final = "agent"
"""The agents' identity where they share one (compose and Kubernetes replicas of one chip type
still do); an agent with an identity of its own is ``agent-<name>`` (the local mesh gives each
agent ``agent-<chip>``), so its key cannot act for another agent's node."""

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def is_agent(identity: str) -> bool:
    """An agent's identity: the shared ``agent`` or one of its own, ``agent-<name>``."""
    return identity == AGENT or identity.startswith(AGENT + "-")


def generate(directory: Path, identities: Iterable[str] = IDENTITIES) -> None:
    """Write a fresh key pair per identity into ``directory``; existing pairs are kept (a
    running mesh's keys must not change under it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in identities:
        key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
        if key_path.exists() and pub_path.exists():
            continue
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created 0600 from the start, never readable by others even for a moment.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private)
        pub_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def load_public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``<identity>.pub`` in ``directory``; ConfigError when it holds none or a bad one."""
    if not directory.is_dir():
        raise ConfigError(f"POCGRID_MESH_KEYS_DIR: {directory} is not a directory")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")):
        name = path.stem
        if not _NAME.match(name):
            raise ConfigError(f"POCGRID_MESH_KEYS_DIR: {path.name}: not an identity name")
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"POCGRID_MESH_KEYS_DIR: {path.name}: not a PEM key ({exc})"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"POCGRID_MESH_KEYS_DIR: {path.name}: not an Ed25519 key")
        keys[name] = key
    if not keys:
        raise ConfigError(f"POCGRID_MESH_KEYS_DIR: {directory} holds no <identity>.pub key")
    return keys


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"POCGRID_MESH_PRIVATE_KEY_FILE: {path} does not exist") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"POCGRID_MESH_PRIVATE_KEY_FILE: {path}: not a PEM key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"POCGRID_MESH_PRIVATE_KEY_FILE: {path}: not an Ed25519 key")
    return key


def private_key_path(keys_dir: str, private_key_file: str, identity: str) -> Path:
    """The private key's file: the explicit one, else ``<keys_dir>/<identity>.key``."""
    return Path(private_key_file) if private_key_file else Path(keys_dir) / f"{identity}.key"


def mesh_env(keys_dir: Path, identity: str) -> Mapping[str, str]:
    """The variables a process of the local mesh runs with to act as ``identity``."""
    return {
        "POCGRID_MESH_KEYS_DIR": str(keys_dir),
        "POCGRID_MESH_IDENTITY": identity,
        "POCGRID_MESH_PRIVATE_KEY_FILE": str(keys_dir / f"{identity}.key"),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.core.mesh_identity DIR", file=sys.stderr)
        return 2
    generate(Path(argv[0]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
