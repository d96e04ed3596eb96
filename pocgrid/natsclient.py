"""How a client authenticates to the mesh's NATS: a user and a password read from a file.

Each identity may subscribe only to its own reply inbox, ``_INBOX.<user>.>`` (the permissions
are in ``services/core/nats_auth.py``), so a client connects with that inbox prefix: nats-py's
default ``_INBOX.`` would put JetStream's answers where the identity may not read them. Only the
standard library here: the CLI, the services and ``deploy/make-secrets.sh`` all use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NatsCredentialsError(ValueError):
    """The password file cannot be read."""


def inbox_prefix(user: str) -> str:
    """The reply-inbox prefix of ``user``'s connections (its only subscribe permission)."""
    return f"_INBOX.{user}"


def connect_options(
    user: str, password_file: str, *, what: str = "password file"
) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: none without a user."""
    if not user:
        return {}
    try:
        password = Path(password_file).read_text().strip()
    except OSError as exc:
        raise NatsCredentialsError(
            f"{what} {password_file!r}: cannot read ({exc.strerror})"
        ) from None
    return {"user": user, "password": password, "inbox_prefix": inbox_prefix(user)}
