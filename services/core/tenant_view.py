"""What a tenant does not see: the mesh's internal addresses.

An agent's ``host:port`` is where work is sent; a tenant who knew it could try the agent
directly. So a response going back through the gateway to a tenant (the gateway's token names a
tenant and no admin role) has every ``agent_address`` field cleared, wherever in the message it
is; services calling each other (the scheduler, the evaluator, the gateway's own OpenAI
endpoint) and admins still get them. Which message types hold such a field is worked out once
per type from the descriptors, so a response type without one costs a dict lookup.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.core.service_tokens import Caller

INTERNAL_FIELDS: Final = frozenset({"agent_address"})
"""Field names a tenant never reads."""

_reaches: dict[str, bool] = {}


def _holds_internal(desc: Any, seen: frozenset[str] = frozenset()) -> bool:
    """``desc`` (a message Descriptor) has an internal field, or a message field that does."""
    cached = _reaches.get(desc.full_name)
    if cached is not None:
        return cached
    if desc.full_name in seen:  # a recursive type: its other fields decide
        return False
    found = False
    for field in desc.fields:
        if field.name in INTERNAL_FIELDS or (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and _holds_internal(field.message_type, seen | {desc.full_name})
        ):
            found = True
    _reaches[desc.full_name] = found
    return found


def is_tenant_view(caller: Caller) -> bool:
    """The response goes to a tenant through the gateway."""
    return caller.service == "gateway" and bool(caller.tenant) and not caller.admin


def strip_internal(message: Any) -> None:
    """Clear every internal field in ``message`` (in place)."""
    if isinstance(message, Message) and _holds_internal(message.DESCRIPTOR):
        _strip(message)


def _strip(message: Message) -> None:
    for field, value in message.ListFields():
        if field.name in INTERNAL_FIELDS:
            message.ClearField(field.name)
        elif field.type != FieldDescriptor.TYPE_MESSAGE or not _holds_internal(field.message_type):
            continue
        elif field.is_repeated:
            entry = field.message_type
            items = value.values() if entry is not None and entry.GetOptions().map_entry else value
            for item in items:
                if isinstance(item, Message):
                    _strip(item)
        else:
            _strip(value)
