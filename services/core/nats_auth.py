"""Who may do what on the mesh's NATS: one identity per service that uses the bus, and the
publish/subscribe permissions nats-server enforces for it.

The table below is the one source: the local mesh (devmesh), ``tools.nats_auth`` (compose and
Kubernetes secrets) and the tests build nats-server's ``authorization`` block from it, and the
bus (``services/core/bus.py``) reads it to know which streams its identity creates. Anything not
allowed is denied: a permission list, once given, is an allow list.

What each identity gets, and why (docs/security.md has the same as a table):

- event subjects it publishes, and nothing else: only agents publish ``usage.>``, so no other
  credential can put a usage record on anyone's bill;
- ``$JS.API.STREAM.{CREATE,UPDATE,INFO}.<stream>`` for the streams it *owns* only (the bus
  creates them idempotently at connect). The usage stream is owned by metering, its consumer,
  not by the agents that publish to it: an agent may not shorten its retention or move its
  subjects;
- for each durable pull consumer it runs: that consumer's own ``$JS.API.CONSUMER.*`` subjects
  (create, info, next) and its acks (``$JS.ACK.<stream>.<durable>.>``), never another's, so a
  service can neither read nor acknowledge (and so destroy) another consumer's events;
- its dead letters (``dlq.<durable>.>``) when it consumes;
- subscribe: only its own reply inbox, ``_INBOX.<user>.>`` (the client's inbox prefix is set to
  it). JetStream answers API calls, acks publishes and delivers pulled events there; a shared
  ``_INBOX.>`` would let any identity read the events delivered to another's pulls. Every consumer
  is a JetStream pull consumer; the only event subjects subscribed to directly are the key
  store's changes (``hears``), which every gateway, scheduler and metering replica must each hear.

This module imports nothing outside the standard library (pocgrid.natsclient neither), so
``deploy/make-secrets.sh`` can run it with a bare ``python3``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pocgrid.natsclient import inbox_prefix

JS_API: Final = "$JS.API"

REGISTRY_STREAM: Final = "POCGRID_REGISTRY"
SCHEDULER_STREAM: Final = "POCGRID_SCHEDULER"
USAGE_STREAM: Final = "POCGRID_USAGE"
EVAL_STREAM: Final = "POCGRID_EVAL"
DLQ_STREAM: Final = "POCGRID_DLQ"
AUDIT_STREAM: Final = "POCGRID_AUDIT"
#: Stream -> the subjects it holds (as services/core/bus.py STREAMS; a test keeps them equal).
STREAM_SUBJECTS: Final[Mapping[str, str]] = {
    REGISTRY_STREAM: "registry.>",
    SCHEDULER_STREAM: "scheduler.>",
    USAGE_STREAM: "usage.>",
    EVAL_STREAM: "eval.>",
    AUDIT_STREAM: "audit.>",
    DLQ_STREAM: "dlq.>",
}

MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""nats-server's largest message (its own default, written out so it is a decision): events are
small protobufs; a larger publish is refused by the server."""


@dataclass(frozen=True, slots=True)
class Durable:
    stream: str
    name: str


@dataclass(frozen=True, slots=True)
class NatsIdentity:
    user: str
    publishes: tuple[str, ...] = ()
    """Event subjects it publishes (subject patterns)."""
    owns: tuple[str, ...] = ()
    """Streams it creates and updates."""
    consumes: tuple[Durable, ...] = ()
    """Its durable pull consumers; each also dead-letters to ``dlq.<durable>.>``."""
    operates_dlq: bool = False
    """Reads, replays and deletes dead letters (the operator's ``pocgrid admin dlq``)."""
    inspects: tuple[str, ...] = ()
    """Streams whose state (``STREAM.INFO``: message counts, config) it may read."""
    hears: tuple[str, ...] = ()
    """Event subjects it subscribes to directly (a plain subscription, not a consumer): the
    key store's changes that every gateway, scheduler and metering replica must each hear
    (``services/core/tenants.py``, ``gateway/auth.py``)."""

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.user)

    def publish_allow(self) -> list[str]:
        allow = list(self.publishes)
        for stream in self.owns:
            allow += [f"{JS_API}.STREAM.{op}.{stream}" for op in ("CREATE", "UPDATE", "INFO")]
        allow += [f"{JS_API}.STREAM.INFO.{s}" for s in self.inspects if s not in self.owns]
        for d in self.consumes:
            allow += [
                # nats-py creates a durable with the pre-2.9 subject, newer clients with
                # CREATE.<stream>.<name>[.<filter>]: both, for this durable only.
                f"{JS_API}.CONSUMER.DURABLE.CREATE.{d.stream}.{d.name}",
                f"{JS_API}.CONSUMER.CREATE.{d.stream}.{d.name}",
                f"{JS_API}.CONSUMER.CREATE.{d.stream}.{d.name}.>",
                f"{JS_API}.CONSUMER.INFO.{d.stream}.{d.name}",
                f"{JS_API}.CONSUMER.MSG.NEXT.{d.stream}.{d.name}",
                f"$JS.ACK.{d.stream}.{d.name}.>",
                f"dlq.{d.name}.>",
            ]
        if self.operates_dlq:
            allow += [
                f"{JS_API}.STREAM.MSG.GET.{DLQ_STREAM}",
                f"{JS_API}.DIRECT.GET.{DLQ_STREAM}",
                f"{JS_API}.STREAM.MSG.DELETE.{DLQ_STREAM}",
            ]
        return allow

    def permissions(self) -> dict[str, Any]:
        return {
            "publish": {"allow": self.publish_allow()},
            "subscribe": {"allow": [f"{self.inbox_prefix}.>", *self.hears]},
        }


METERING_DURABLE: Final = "metering"
SCHEDULER_NODE_LOST_DURABLE: Final = "scheduler-node-lost"
REGISTRY_AUDIT_DURABLE: Final = "registry-audit"
#: The key store's tenant changes (quotas, known tenants).
TENANT_EVENTS: Final = "registry.tenant.>"

IDENTITIES: Final[Mapping[str, NatsIdentity]] = {
    i.user: i
    for i in (
        # The registry keeps the audit log: it owns the audit stream and is its one consumer.
        NatsIdentity(
            "registry",
            publishes=("registry.>",),
            owns=(REGISTRY_STREAM, AUDIT_STREAM, DLQ_STREAM),
            consumes=(Durable(AUDIT_STREAM, REGISTRY_AUDIT_DURABLE),),
        ),
        NatsIdentity(
            "scheduler",
            publishes=("scheduler.>", "audit.scheduler.>"),
            owns=(SCHEDULER_STREAM, DLQ_STREAM),
            consumes=(Durable(REGISTRY_STREAM, SCHEDULER_NODE_LOST_DURABLE),),
            hears=(TENANT_EVENTS,),
        ),
        # Agents publish usage and nothing else; the usage stream is metering's.
        NatsIdentity("agent", publishes=("usage.>",)),
        NatsIdentity(
            "metering",
            owns=(USAGE_STREAM, DLQ_STREAM),
            consumes=(Durable(USAGE_STREAM, METERING_DURABLE),),
            hears=(TENANT_EVENTS,),
        ),
        # The gateway publishes nothing and owns no stream: it hears revocations (a revoked key
        # stops working on every replica) and tenant changes (rate limits).
        NatsIdentity("gateway", hears=("registry.key.revoked", TENANT_EVENTS)),
        NatsIdentity("evaluator", publishes=("eval.>",), owns=(EVAL_STREAM,)),
        # `pocgrid admin dlq`: a person's credential, given to no service. Replaying a dead
        # letter republishes it to its original subject, so it may publish every event subject
        # (usage too: a usage event metering dead-lettered goes back to metering). It may read
        # every stream's state, but create, change or consume none.
        NatsIdentity(
            "operator",
            publishes=tuple(s for n, s in STREAM_SUBJECTS.items() if n != DLQ_STREAM),
            operates_dlq=True,
            inspects=tuple(STREAM_SUBJECTS),
        ),
    )
}


def new_passwords(users: Iterable[str] = IDENTITIES) -> dict[str, str]:
    """A fresh random password per identity (256 bits, URL-safe: no quoting in configs)."""
    return {u: new_password() for u in users}


def new_password() -> str:
    """256 random bits, URL-safe, led by a letter: nats-server parses a ``$VARIABLE`` password
    as a config value, so one that starts like a number ("0-a..." is taken for a date, "1e..."
    for a float, "-..." for a negative number) stops it from starting."""
    return "p" + secrets.token_urlsafe(32)


def server_authorization(passwords: Mapping[str, str]) -> dict[str, Any]:
    """nats-server's ``authorization`` block for these identities' passwords."""
    return {
        "users": [
            {
                "user": user,
                "password": passwords[user],
                "permissions": IDENTITIES[user].permissions(),
            }
            for user in passwords
        ]
    }
