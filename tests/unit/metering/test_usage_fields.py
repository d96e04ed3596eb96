"""Usage-record fields have one source, the contract: every copy follows it by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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
    assert (row["started_at"], row["ended_at"]) == (10_000_000, 20_000_000)  # microseconds


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


def test_ingest_writes_sqlite_datetimes_exactly_as_sqlalchemy_binds_them() -> None:
    # Ingest formats SQLite's DATETIME text itself (store.sqlite_datetime); rows it writes must
    # read back, sort and compare exactly like rows SQLAlchemy writes.
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from services.metering.store import epoch_us, from_epoch_us, sqlite_datetime

    dialect = sqlite.dialect()
    bind = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    for when in (
        datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 8, 0, 1, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2100, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        us = epoch_us(when)
        assert from_epoch_us(us) == when
        assert sqlite_datetime(us) == bind(when), when
    # Another zone's wall time is converted, not written as it is; naive means UTC.
    eight_in_shanghai = datetime(2026, 12, 1, 8, tzinfo=timezone(timedelta(hours=8)))
    assert sqlite_datetime(epoch_us(eight_in_shanghai)) == "2026-12-01 00:00:00.000000"
    assert epoch_us(datetime(1970, 1, 1, 0, 0, 1)) == 1_000_000
