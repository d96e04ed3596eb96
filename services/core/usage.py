"""Usage-record fields, read off the contract: ``UsageRecorded`` (events.proto) is their one
definition; the agent's responses, metering's records, summaries and rows follow it by name.

Code that moves usage between messages copies these fields by name instead of listing them, so
a field added to the proto reaches every copy (and a row column missing for it fails a test).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from pocgrid.v1 import events_pb2, metering_pb2

_EVENT: Final = events_pb2.UsageRecorded.DESCRIPTOR
_RECORD: Final = metering_pb2.UsageRecord.DESCRIPTOR

_COUNT_TYPES: Final = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32})
_QUANTITY_TYPES: Final = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def _scalars(descriptor: Descriptor) -> tuple[str, ...]:
    return tuple(f.name for f in descriptor.fields if f.type != FieldDescriptor.TYPE_MESSAGE)


COUNT_FIELDS: Final = tuple(f.name for f in _EVENT.fields if f.type in _COUNT_TYPES)
"""Whole-number amounts of one unit of work (tokens_in, tokens_out, samples)."""
QUANTITY_FIELDS: Final = tuple(f.name for f in _EVENT.fields if f.type in _QUANTITY_TYPES)
"""Measured amounts (busy_device_seconds, memory_gib_seconds)."""
AMOUNT_FIELDS: Final = COUNT_FIELDS + QUANTITY_FIELDS
"""What a unit of work consumed: the fields that are summed and billed."""
RECORD_SCALARS: Final = _scalars(_RECORD)
"""A stored usage record's non-timestamp fields (usage_id, tenant, ..., the amounts)."""
EVENT_TO_RECORD: Final = tuple(n for n in _scalars(_EVENT) if n in set(RECORD_SCALARS))
"""Fields an event carries into its record as they are (the id is renamed, times resolved)."""
RECORD_TIMES: Final = tuple(
    f.name for f in _RECORD.fields if f.type == FieldDescriptor.TYPE_MESSAGE
)
"""The record's timestamps (started_at, ended_at)."""


def copy_fields(source: object, target: Message, names: Iterable[str]) -> None:
    """Set each named scalar field of ``target`` from the attribute of that name in ``source``
    (a message, or a row whose columns are named as the fields)."""
    for name in names:
        setattr(target, name, getattr(source, name))
