"""Where the public data shared by the projects lives (``shared/``, beside the repository).

Looked up as ``$POCGRID_SHARED_DIR``, else the first ``shared/`` with a ``data/`` folder beside the
repository or beside one of its parent folders (a git worktree sits a level or two deeper than
the main checkout). A missing folder is an error that says where it was looked for; a check that
needs the data fails with that message instead of quietly not running.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

ENV_SHARED_DIR: Final = "POCGRID_SHARED_DIR"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


class SharedDataMissing(FileNotFoundError):
    """The shared data a tool or test needs is not there."""


def shared_dir(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if env.get(ENV_SHARED_DIR):
        return Path(env[ENV_SHARED_DIR])
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared"
        if (candidate / "data").is_dir():
            return candidate
    return None


def shared_path(*parts: str, env: Mapping[str, str] | None = None) -> Path:
    """``shared/<parts>``, which must exist."""
    root = shared_dir(env)
    if root is None:
        raise SharedDataMissing(
            f"shared data not found: no shared/data/ beside {REPO_ROOT} or its parents; "
            f"set {ENV_SHARED_DIR} to the shared/ folder"
        )
    path = root.joinpath(*parts)
    if not path.exists():
        raise SharedDataMissing(
            f"shared data not found: {path} is missing (shared/ is {root}; "
            f"set {ENV_SHARED_DIR} to another)"
        )
    return path
