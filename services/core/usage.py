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

from pocgrid.meters import METERS
from pocgrid.v1 import agent_pb2, events_pb2, metering_pb2

_EVENT: Final = events_pb2.UsageRecorded.DESCRIPTOR
_RECORD: Final = metering_pb2.UsageRecord.DESCRIPTOR


def _scalars(descriptor: Descriptor) -> tuple[str, ...]:
    return tuple(f.name for f in descriptor.fields if f.type != FieldDescriptor.TYPE_MESSAGE)


AMOUNT_FIELDS: Final = tuple(m.source_field for m in METERS.values())
"""What a unit of work consumed, one int64 per meter (pocgrid.meters): summed and billed."""
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


def usage_into_response(
    usage: events_pb2.UsageRecorded,
    response: agent_pb2.RunTaskResponse | agent_pb2.ServeRequestsResponse,
) -> None:
    """An agent response's usage from its event: counts as they are; device time and memory,
    which the event holds in integer units, in seconds and GiB-seconds for people to read."""
    response.tokens_in = usage.tokens_in
    response.tokens_out = usage.tokens_out
    response.samples = usage.samples
    response.busy_device_seconds = usage.busy_device_us / 1_000_000
    response.memory_gib_seconds = usage.memory_byte_seconds / (1 << 30)
