"""Which RPCs may be sent again after UNAVAILABLE: the contract says so, per method.

Each retry-safe method in ``protos/pocgrid/v1`` carries the standard ``idempotency_level``
option (``NO_SIDE_EFFECTS`` for reads, ``IDEMPOTENT`` for calls whose repeat changes nothing
more); a method without it is never retried. The rule used to be a name prefix (``Get``, ``List``,
``Check``), which a new method could satisfy or miss by accident.
"""

from __future__ import annotations

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

RETRY_SAFE_LEVELS = frozenset({MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT})


def is_retry_safe(method: MethodDescriptor) -> bool:
    """True when the contract marks ``method`` free of side effects or idempotent."""
    return method.GetOptions().idempotency_level in RETRY_SAFE_LEVELS
