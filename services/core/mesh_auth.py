"""A process's mesh credentials (its signer and the verifier of everyone's tokens), from config.

``MeshCredentials.load`` is what every service runs at start; tools and tests that call a
service port directly use ``MeshCredentials.from_dir`` with a key directory and the identity they
act as, then ``services.core.mesh_channel`` to get a channel that signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.core.config import CommonConfig, ConfigError
from services.core.mesh_identity import load_private_key, load_public_keys, private_key_path
from services.core.service_tokens import TokenSigner, TokenVerifier


@dataclass(frozen=True, slots=True)
class MeshCredentials:
    signer: TokenSigner
    verifier: TokenVerifier

    @property
    def identity(self) -> str:
        return self.signer.identity

    @classmethod
    def load(cls, common: CommonConfig, default_identity: str) -> MeshCredentials:
        if not common.mesh_keys_dir:
            raise ConfigError(
                "POCGRID_MESH_KEYS_DIR: not set: every service needs the mesh's keys to "
                "authenticate its callers (make them with `python -m services.core.mesh_identity "
                "DIR`; `pocgrid up` and deploy/make-secrets.sh do)"
            )
        identity = common.mesh_identity or default_identity
        return cls.from_dir(Path(common.mesh_keys_dir), identity, common.mesh_private_key_file)

    @classmethod
    def from_dir(cls, keys_dir: Path, identity: str, private_key_file: str = "") -> MeshCredentials:
        public = load_public_keys(keys_dir)
        if identity not in public:
            raise ConfigError(
                f"POCGRID_MESH_IDENTITY={identity!r}: no {identity}.pub in {keys_dir}"
            )
        key = load_private_key(private_key_path(str(keys_dir), private_key_file, identity))
        if key.public_key() != public[identity]:
            raise ConfigError(
                f"POCGRID_MESH_PRIVATE_KEY_FILE: not the private key of {identity}.pub"
            )
        return cls(TokenSigner(identity, key), TokenVerifier(public))
