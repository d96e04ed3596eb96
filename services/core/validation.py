"""Request validation helpers that raise ``InvalidArgument`` naming the field and the rule."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from google.protobuf.message import DecodeError

from services.core.errors import InvalidArgument

T = TypeVar("T")

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_TEXT = 1024
MAX_LABELS = 64


def decode_request(decode: Callable[[bytes], T], raw: bytes, method: str) -> T:
    """The request message of ``method`` from its wire bytes; corrupt bytes are bad input."""
    try:
        return decode(raw)
    except DecodeError as exc:
        raise InvalidArgument(
            "request", f"is not a valid request message for {method} ({exc})"
        ) from None


def require_text(field: str, value: str, max_len: int = 256) -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(field, f"must be at most {max_len} characters (got {len(value)})")
    return value


def require_id(field: str, value: str) -> str:
    require_text(field, value, 63)
    if not _ID_RE.match(value):
        raise InvalidArgument(field, "must match [a-z0-9][a-z0-9._-]{0,62}")
    return value


def optional_text(field: str, value: str, max_len: int = MAX_TEXT) -> str:
    if len(value) > max_len:
        raise InvalidArgument(field, f"must be at most {max_len} characters (got {len(value)})")
    return value


def require_range(field: str, value: int | float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise InvalidArgument(field, f"must be between {lo:g} and {hi:g} (got {value:g})")


def require_labels(field: str, labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(field, f"at most {MAX_LABELS} entries (got {len(labels)})")
    for key, value in labels.items():
        if not key or len(key) > 63:
            raise InvalidArgument(f"{field}[{key[:20]!r}]", "keys must be 1-63 characters")
        if len(value) > 256:
            raise InvalidArgument(f"{field}[{key!r}]", "values must be at most 256 characters")


def page_size(field: str, requested: int, default: int = 100, maximum: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument(field, "must be >= 0")
    if requested > maximum:
        raise InvalidArgument(field, f"must be <= {maximum}")
    return requested or default


def page_offset(field: str, token: str) -> int:
    """Page tokens are decimal offsets; opaque to clients, simple for us."""
    if not token:
        return 0
    if not token.isdigit() or len(token) > 12:
        raise InvalidArgument(field, "is not a token returned by a previous call")
    return int(token)
