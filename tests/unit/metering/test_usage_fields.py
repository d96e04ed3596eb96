"""Usage-record fields have one source, the contract: every copy follows it by name."""

from __future__ import annotations

from pocgrid.v1 import agent_pb2, events_pb2, metering_pb2
from services.core.usage import (
    AMOUNT_FIELDS,
    COUNT_FIELDS,
    EVENT_TO_RECORD,
    QUANTITY_FIELDS,
    RECORD_SCALARS,
    RECORD_TIMES,
    copy_fields,
)
from services.metering.recorder import to_record
from services.metering.tables import UsageRow


def _fields(message: type) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_the_fields_are_read_off_the_usage_event() -> None:
    assert COUNT_FIELDS == ("tokens_in", "tokens_out", "samples")
    assert QUANTITY_FIELDS == ("busy_device_seconds", "memory_gib_seconds")
    assert set(EVENT_TO_RECORD) == set(RECORD_SCALARS) - {"usage_id"}
    assert set(RECORD_TIMES) == {"started_at", "ended_at"}


def test_every_message_that_carries_usage_has_every_amount() -> None:
    for message in (
        events_pb2.UsageRecorded,
        metering_pb2.UsageRecord,
        metering_pb2.ChipUsage,
        agent_pb2.RunTaskResponse,
    ):
        assert set(AMOUNT_FIELDS) <= _fields(message), message.__name__


def test_metering_rows_have_a_column_per_record_field() -> None:
    columns = {c.name for c in UsageRow.__table__.columns}
    assert columns == set(RECORD_SCALARS) | set(RECORD_TIMES) | {"recorded_at"}


def test_an_event_becomes_a_record_field_for_field() -> None:
    event = events_pb2.UsageRecorded(event_id="e1", tenant="t", node_id="n", chip="c", model="m")
    for i, name in enumerate(AMOUNT_FIELDS, start=1):
        setattr(event, name, i)
    event.ended_at.FromSeconds(20)
    event.started_at.FromSeconds(10)
    record = to_record(event, "e1")
    assert record.usage_id == "e1"
    for name in EVENT_TO_RECORD:
        assert getattr(record, name) == getattr(event, name), name
    assert record.started_at == event.started_at and record.ended_at == event.ended_at
    response = agent_pb2.RunTaskResponse()
    copy_fields(event, response, AMOUNT_FIELDS)
    assert [getattr(response, n) for n in AMOUNT_FIELDS] == [1, 2, 3, 4, 5]
