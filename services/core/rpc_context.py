"""Per-RPC context that outlives the servicer call: the calling service, tenant, role and the
caller's deadline.

Set by the server interceptor from the caller's verified token, read by the client interceptor,
so any downstream call made while serving a request carries the tenant and a deadline no later
than the caller's.
"""

from __future__ import annotations

import contextvars
import time

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("pocgrid_tenant", default="")
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("pocgrid_caller", default="")
_admin: contextvars.ContextVar[bool] = contextvars.ContextVar("pocgrid_admin", default=False)
_key_id: contextvars.ContextVar[str] = contextvars.ContextVar("pocgrid_key_id", default="")
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pocgrid_deadline", default=None
)


def current_tenant() -> str:
    return _tenant.get()


def current_caller() -> str:
    """The service identity whose signed token the call carried ("" when none was checked)."""
    return _caller.get()


def set_caller(service: str) -> contextvars.Token[str]:
    return _caller.set(service)


def set_tenant(tenant: str) -> contextvars.Token[str]:
    return _tenant.set(tenant)


def current_is_admin() -> bool:
    """The caller's token carries the admin role (the gateway's admin key, or the operator)."""
    return _admin.get()


def set_admin(admin: bool) -> contextvars.Token[bool]:
    return _admin.set(admin)


def current_key_id() -> str:
    """Id of the API key the gateway authenticated the call with (the audit log's "who")."""
    return _key_id.get()


def set_key_id(key_id: str) -> contextvars.Token[str]:
    return _key_id.set(key_id)


def set_deadline_from_remaining(remaining_s: float | None) -> None:
    _deadline.set(None if remaining_s is None else time.monotonic() + remaining_s)


def remaining_s() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def downstream_timeout(cap_s: float, requested_s: float | None = None) -> float:
    """``min(caller's time remaining, requested, cap)``: never outlive the caller."""
    candidates = [cap_s]
    left = remaining_s()
    if left is not None:
        candidates.append(left)
    if requested_s is not None:
        candidates.append(requested_s)
    return max(0.001, min(candidates))
