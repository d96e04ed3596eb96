"""Addresses a peer can dial: what a service bound to a wildcard should tell others."""

from __future__ import annotations

import socket


def reachable_address(bound: str) -> str:
    """The address peers dial when none is configured: a wildcard bind (``0.0.0.0`` in a
    container) is replaced by this host's own address, so ``docker compose --scale`` replicas
    each advertise their container's IP instead of one shared, unreachable name."""
    host, _, port = bound.rpartition(":")
    if host.strip("[]") not in ("0.0.0.0", "::", ""):
        return bound
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        return f"127.0.0.1:{port}"
    return f"{ip}:{port}"


def host_of(address: str) -> str:
    """The host of ``HOST:PORT`` (brackets of an IPv6 literal removed)."""
    host, _, _port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1"
