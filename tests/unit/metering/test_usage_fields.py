"""Usage-record fields have one source, the contract: every copy follows it by name."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from pocgrid.meters import METERS
from pocgrid.v1 import agent_pb2, events_pb2, metering_pb2
from services.core.usage import (
    AMOUNT_FIELDS,
    EVENT_TO_RECORD,
    RECORD_SCALARS,
    RECORD_TIMES,
    usage_into_response,
)
from services.metering.recorder import to_row
from services.metering.tables import UsageRow


def _fields(message: type) -> dict[str, FieldDescriptor]:
    return {f.name: f for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_the_amounts_are_the_meters_fields_and_integers_everywhere() -> None:
    assert tuple(m.source_field for m in METERS.values()) == AMOUNT_FIELDS
    assert AMOUNT_FIELDS == (
        "tokens_in",
        "tokens_out",
        "samples",
        "busy_device_us",
        "memory_byte_seconds",
    )
    for message in (events_pb2.UsageRecorded, metering_pb2.UsageRecord, metering_pb2.ChipUsage):
        fields = _fields(message)
        for name in AMOUNT_FIELDS:
            assert fields[name].type == FieldDescriptor.TYPE_INT64, (message.__name__, name)
    assert set(EVENT_TO_RECORD) == set(RECORD_SCALARS) - {"usage_id", "invoice_id"}
    assert set(RECORD_TIMES) == {"started_at", "ended_at"}


def test_metering_rows_have_a_column_per_record_field() -> None:
    columns = {c.name for c in UsageRow.__table__.columns}
    assert columns == set(RECORD_SCALARS) | set(RECORD_TIMES) | {"recorded_at"}
    for name in AMOUNT_FIELDS:
        assert str(UsageRow.__table__.columns[name].type) == "BIGINT", name


def test_an_event_becomes_a_row_field_for_field() -> None:
    event = events_pb2.UsageRecorded(event_id="e1", tenant="t", node_id="n", chip="c", model="m")
    for i, name in enumerate(AMOUNT_FIELDS, start=1):
        setattr(event, name, i)
    event.ended_at.FromSeconds(20)
    event.started_at.FromSeconds(10)
    row = to_row(event, "e1")
    assert row["usage_id"] == "e1" and row["devices"] == 1
    for name in EVENT_TO_RECORD:
        if name != "devices":
            assert row[name] == getattr(event, name), name
    assert row["started_at"].timestamp() == 10 and row["ended_at"].timestamp() == 20


def test_the_agent_response_shows_seconds_from_the_integer_event() -> None:
    event = events_pb2.UsageRecorded(
        tokens_in=3, busy_device_us=1_500_000, memory_byte_seconds=(1 << 30) * 3
    )
    response = agent_pb2.RunTaskResponse()
    usage_into_response(event, response)
    assert (response.tokens_in, response.busy_device_seconds, response.memory_gib_seconds) == (
        3,
        1.5,
        3.0,
    )
