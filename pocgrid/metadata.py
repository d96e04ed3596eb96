"""gRPC metadata keys of the pocgrid wire protocol, shared by clients, the gateway and services."""

from __future__ import annotations

TENANT_METADATA_KEY = "x-pocgrid-tenant"
"""The tenant a call acts for: set by the gateway (from the API key) and passed on downstream."""

ROLE_METADATA_KEY = "x-pocgrid-role"
"""``admin`` when the caller's API key is an admin key: set by the gateway only (it never passes
a caller's own value on), read by services that let an admin see every tenant."""
ADMIN_ROLE = "admin"
