"""gRPC metadata keys of the pocgrid wire protocol, shared by clients, the gateway and services."""

from __future__ import annotations

TENANT_METADATA_KEY = "x-pocgrid-tenant"
"""The tenant a call acts for: set by the gateway (from the API key) and passed on downstream."""
