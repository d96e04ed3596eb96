"""Agent tables: the outbox of its usage events. An agent keeps no other state; the outbox is
what lets a finished task be answered at once when NATS is away (``services.core.outbox``)."""

from __future__ import annotations

from sqlalchemy import MetaData

from services.core.outbox import outbox_table

METADATA = MetaData()
OUTBOX = outbox_table(METADATA, "agent_outbox")
