"""The dead-letter stream: what a consumer could not handle, kept for an operator to see and replay.

A service's consumer dead-letters an event it cannot handle (undecodable, rejected by its handler
as poison, or still failing after the configured number of deliveries) by publishing a copy to
``dlq.<consumer>.<original subject>`` in the ``POCGRID_DLQ`` stream and terminating the original.
The copy keeps the original payload and headers, and adds the ``Pocgrid-Dlq-*`` headers below.

Replay republishes the payload to the original subject with a fresh ``Nats-Msg-Id`` of
``<event id>:replay:<dead-letter sequence>``. The original id cannot be reused: the original stream
still remembers it for its duplicate window (two minutes) and would drop the replay as a
duplicate, so a replay soon after the failure would silently never be delivered. The fresh id is
unique per dead letter, so a retried replay of the same entry is still stored once. The
original id travels in ``Pocgrid-Event-Id``, which consumers read as the event id, so a
handler's own deduplication (metering keys usage by the event id) still sees the same event. A
replayed entry is deleted from the dead-letter stream once the original stream has stored the
replay; if it fails again it comes back as a new entry.

This module holds only nats-py code, so the CLI (``pocgrid admin dlq``) can use it without the
services' runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.js.errors

DLQ_STREAM = "POCGRID_DLQ"
DLQ_SUBJECTS = "dlq.>"
DLQ_PREFIX = "dlq."
#: Dead letters are kept longer than events: an operator may look days later.
DLQ_MAX_AGE_S = 30 * 24 * 3600.0

MSG_ID = "Nats-Msg-Id"
#: The logical event id of a replayed event (its Nats-Msg-Id had to change, see above).
EVENT_ID = "Pocgrid-Event-Id"

REASON = "Pocgrid-Dlq-Reason"
SUBJECT = "Pocgrid-Dlq-Subject"
STREAM = "Pocgrid-Dlq-Stream"
STREAM_SEQ = "Pocgrid-Dlq-Stream-Seq"
CONSUMER = "Pocgrid-Dlq-Consumer"
ORIGINAL_EVENT_ID = "Pocgrid-Dlq-Event-Id"
DELIVERIES = "Pocgrid-Dlq-Deliveries"
DEAD_AT = "Pocgrid-Dlq-At"
DLQ_HEADERS = (
    REASON,
    SUBJECT,
    STREAM,
    STREAM_SEQ,
    CONSUMER,
    ORIGINAL_EVENT_ID,
    DELIVERIES,
    DEAD_AT,
)


def event_id(headers: Mapping[str, str]) -> str:
    """The logical id of an event: ``Pocgrid-Event-Id`` for a replay, else ``Nats-Msg-Id``."""
    return headers.get(EVENT_ID) or headers.get(MSG_ID, "")


def dead_letter_subject(consumer: str, subject: str) -> str:
    return f"{DLQ_PREFIX}{consumer}.{subject}"


def dead_letter_headers(
    original: Mapping[str, str],
    *,
    reason: str,
    subject: str,
    stream: str,
    stream_seq: int,
    consumer: str,
    deliveries: int,
    dead_at: datetime,
) -> dict[str, str]:
    """Headers of a dead letter: the original's (its Nats-Msg-Id replaced) and the Dlq ones."""
    headers = {k: v for k, v in original.items() if k != MSG_ID and k not in DLQ_HEADERS}
    headers.update(
        {
            # One dead letter per (stream, sequence, consumer), however often dead-lettering is
            # retried.
            MSG_ID: f"dlq:{stream}:{stream_seq}:{consumer}",
            REASON: reason,
            SUBJECT: subject,
            STREAM: stream,
            STREAM_SEQ: str(stream_seq),
            CONSUMER: consumer,
            ORIGINAL_EVENT_ID: event_id(original),
            DELIVERIES: str(deliveries),
            DEAD_AT: dead_at.isoformat(),
        }
    )
    return headers


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    """Sequence in the dead-letter stream: the id ``replay`` takes."""
    reason: str
    subject: str
    stream: str
    stream_seq: int
    consumer: str
    event_id: str
    deliveries: int
    dead_at: str
    data: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.seq,
            "reason": self.reason,
            "subject": self.subject,
            "stream": self.stream,
            "stream_seq": self.stream_seq,
            "consumer": self.consumer,
            "event_id": self.event_id,
            "deliveries": self.deliveries,
            "dead_at": self.dead_at,
            "size": len(self.data),
            "headers": {k: v for k, v in self.headers.items() if k not in DLQ_HEADERS},
        }


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _from_raw(raw: Any) -> DeadLetter:
    headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
    return DeadLetter(
        seq=int(raw.seq),
        reason=headers.get(REASON, ""),
        subject=headers.get(SUBJECT, ""),
        stream=headers.get(STREAM, ""),
        stream_seq=_int(headers.get(STREAM_SEQ)),
        consumer=headers.get(CONSUMER, ""),
        event_id=headers.get(ORIGINAL_EVENT_ID, ""),
        deliveries=_int(headers.get(DELIVERIES)),
        dead_at=headers.get(DEAD_AT, ""),
        data=bytes(raw.data or b""),
        headers=headers,
    )


class NoSuchDeadLetter(LookupError):
    pass


async def list_dead_letters(js: Any, limit: int = 0) -> list[DeadLetter]:
    """Dead letters still in the stream, oldest first (at most ``limit`` when > 0)."""
    try:
        info = await js.stream_info(DLQ_STREAM)
    except nats.js.errors.NotFoundError:
        return []
    out: list[DeadLetter] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(DLQ_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue  # deleted (replayed)
        out.append(_from_raw(raw))
        if limit and len(out) >= limit:
            break
    return out


async def get_dead_letter(js: Any, seq: int) -> DeadLetter:
    try:
        return _from_raw(await js.get_msg(DLQ_STREAM, seq))
    except nats.js.errors.NotFoundError as exc:
        raise NoSuchDeadLetter(f"no dead letter {seq} in {DLQ_STREAM}") from exc


def replay_msg_id(letter: DeadLetter) -> str:
    return f"{letter.event_id}:replay:{letter.seq}"


async def replay(js: Any, letter: DeadLetter) -> int:
    """Republish ``letter`` to its original subject; delete it once stored. Returns the new
    sequence in the original stream."""
    if not letter.subject:
        raise ValueError(f"dead letter {letter.seq} names no original subject")
    headers = {k: v for k, v in letter.headers.items() if k not in DLQ_HEADERS}
    if letter.event_id:
        headers[EVENT_ID] = letter.event_id
    headers[MSG_ID] = replay_msg_id(letter)
    ack = await js.publish(letter.subject, letter.data, headers=headers)
    await js.delete_msg(DLQ_STREAM, letter.seq)
    return int(ack.seq)
