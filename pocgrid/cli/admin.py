"""``pocgrid admin``: operator commands. ``keys``, ``tenants`` and ``audit`` go through the
gateway with an admin API key (``pocgrid.cli.keys``); ``dlq`` talks to the mesh's NATS directly.

``pocgrid admin dlq list`` shows the dead-letter stream; ``pocgrid admin dlq replay ID...`` (or
``--all``) republishes dead letters to their original subjects (see ``pocgrid.deadletter`` for
the message id a replay carries and why). NATS is found from ``--nats``, then
``POCGRID_NATS_URL``, then the local mesh that ``pocgrid up`` recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from pocgrid import deadletter
from pocgrid.cli import keys
from pocgrid.cli.output import emit_json, fail, say, table
from pocgrid.cli.target import NoMeshError, local_mesh
from pocgrid.natsclient import NatsCredentialsError, connect_options


def register(sub: Any) -> None:
    """Add ``admin`` and its subcommands to the top-level parser's subparsers."""
    admin = sub.add_parser(
        "admin", help="operator commands (API keys, tenants, audit log, dead-letter stream)"
    )
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    keys.register(admin_sub)
    dlq = admin_sub.add_parser("dlq", help="the dead-letter stream (events consumers gave up on)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    def nats_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--nats",
            help="NATS URL (env POCGRID_NATS_URL; default: the local mesh's nats-server)",
        )

    p = dlq_sub.add_parser("list", help="dead letters, oldest first")
    nats_option(p)
    p.add_argument("--json", action="store_true", help="one JSON array of dead letters")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    p.set_defaults(func=dlq_list)

    p = dlq_sub.add_parser("replay", help="republish dead letters to their original subjects")
    nats_option(p)
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead-letter ids from `list`")
    p.add_argument("--all", action="store_true", help="every dead letter in the stream")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=dlq_replay)


def local_mesh_nats_url() -> str:
    """NATS URL of the local mesh that `pocgrid up` recorded, or ''."""
    # Read through target.local_mesh, the CLI's one reader of the launcher's state file.
    state = local_mesh()
    return state.nats_url if state is not None else ""


def nats_url(args: argparse.Namespace) -> str:
    url = args.nats or os.environ.get("POCGRID_NATS_URL", "") or local_mesh_nats_url()
    if not url:
        raise NoMeshError(
            "no NATS found: run `pocgrid up --detach`, or pass --nats / set POCGRID_NATS_URL"
        )
    return str(url)


def nats_credentials(args: argparse.Namespace) -> dict[str, Any]:
    """A NATS named by --nats or POCGRID_NATS_URL: the identity of POCGRID_NATS_USER and
    POCGRID_NATS_PASSWORD_FILE (none: no credentials); the local mesh: its operator identity."""
    if args.nats or os.environ.get("POCGRID_NATS_URL"):
        return connect_options(
            os.environ.get("POCGRID_NATS_USER", ""),
            os.environ.get("POCGRID_NATS_PASSWORD_FILE", ""),
            what="POCGRID_NATS_PASSWORD_FILE",
        )
    state = local_mesh()
    if state is None:
        return {}
    return connect_options(state.nats_user, state.nats_password_file)


async def _quiet(exc: Exception) -> None:
    # nats-py logs every failed attempt with a traceback; the command reports the outcome.
    return None


def _run(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    url = nats_url(args)
    try:
        credentials = nats_credentials(args)
    except NatsCredentialsError as exc:
        return fail(str(exc))

    async def go() -> int:
        wait_s = min(args.timeout, 10.0)
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    url,
                    connect_timeout=wait_s,
                    allow_reconnect=False,
                    error_cb=_quiet,
                    **credentials,
                ),
                wait_s + 1.0,
            )
        except Exception as exc:
            return fail(f"cannot reach NATS at {url}: {exc!r}")
        try:
            return await work(nc.jetstream(timeout=args.timeout))
        finally:
            await nc.close()

    return asyncio.run(go())


def dlq_list(args: argparse.Namespace) -> int:
    async def work(js: Any) -> int:
        letters = await deadletter.list_dead_letters(js, limit=max(args.limit, 0))
        if args.json:
            emit_json([d.as_dict() for d in letters])
            return 0
        if not letters:
            say("the dead-letter stream is empty")
            return 0
        say(
            table(
                ["id", "dead at", "consumer", "subject", "event id", "deliveries", "reason"],
                [
                    [
                        d.seq,
                        d.dead_at,
                        d.consumer,
                        d.subject,
                        d.event_id,
                        d.deliveries,
                        d.reason,
                    ]
                    for d in letters
                ],
            )
        )
        say(f"\n{len(letters)} dead letters; `pocgrid admin dlq replay ID` republishes one")
        return 0

    return _run(args, work)


def dlq_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        return fail("name dead-letter ids, or pass --all (not both)")

    async def work(js: Any) -> int:
        if args.all:
            letters = await deadletter.list_dead_letters(js)
        else:
            letters = []
            for seq in args.ids:
                try:
                    letters.append(await deadletter.get_dead_letter(js, seq))
                except deadletter.NoSuchDeadLetter as exc:
                    return fail(str(exc))
        replayed: list[dict[str, Any]] = []
        for letter in letters:
            try:
                new_seq = await deadletter.replay(js, letter)
            except Exception as exc:
                if args.json:
                    emit_json({"replayed": replayed, "failed": letter.seq, "error": repr(exc)})
                return fail(f"replay of dead letter {letter.seq} failed: {exc!r}")
            replayed.append(
                {
                    "id": letter.seq,
                    "subject": letter.subject,
                    "event_id": letter.event_id,
                    "msg_id": deadletter.replay_msg_id(letter),
                    "stream_seq": new_seq,
                }
            )
            if not args.json:
                say(f"replayed {letter.seq} -> {letter.subject} (event {letter.event_id})")
        if args.json:
            emit_json({"replayed": replayed})
        elif not replayed:
            say("nothing to replay")
        return 0

    return _run(args, work)
