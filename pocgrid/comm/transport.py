"""TCP transport: bootstrap (unique id, rank table) and framed peer connections.

Why raw TCP sockets: agents are separate processes that may sit on different hosts or in
different containers, so the transport must cross hosts, and the data path must not copy a
tensor more often than the kernel does. A blocking socket per pair of ranks with
``sendall(memoryview)`` and ``recv_into(memoryview)`` moves numpy buffers without a Python copy
(gRPC would serialise every tensor into a protobuf message and cap it at the message limit;
shared memory is faster on one host but does not cross hosts; Gloo/UCX would add a native
dependency that these machines cannot build). ``bench/comm_throughput.py`` measures what that
choice costs against a shared-memory copy on this host.

Every frame carries a header (magic, kind, communicator id, sequence, step, payload length), so
a frame of another communicator or of another call is refused instead of mixed in.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from pocgrid.comm.errors import (
    CommAbortedError,
    CommError,
    CommInputError,
    CommProtocolError,
    CommTimeoutError,
    PeerLostError,
)

MAGIC: Final = b"PGCX"
KIND_COLLECTIVE: Final = 1
KIND_P2P: Final = 2
KIND_ABORT: Final = 3
_HEADER: Final = struct.Struct("!4sB16sQIIQ")
HEADER_BYTES: Final = _HEADER.size
_LEN: Final = struct.Struct("!I")
TOKEN_BYTES: Final = 16
_SOCKET_BUFFER: Final = 4 * 1024 * 1024
_MAX_BOOTSTRAP_MESSAGE: Final = 1 << 20
_UID_PREFIX: Final = "pgcx1"


@dataclass(frozen=True, slots=True)
class UniqueId:
    """What every rank needs to join one communicator: the bootstrap root and a random token.

    Like ``ncclUniqueId``, it is made once (by any process, which then hosts the bootstrap
    root until every rank has joined) and handed to every rank out of band.
    """

    host: str
    port: int
    token: bytes

    def encode(self) -> str:
        return f"{_UID_PREFIX}:{self.host}:{self.port}:{self.token.hex()}"

    @classmethod
    def decode(cls, text: str) -> UniqueId:
        parts = text.split(":")
        if len(parts) != 4 or parts[0] != _UID_PREFIX:
            raise CommInputError("unique_id", f"must look like {_UID_PREFIX}:HOST:PORT:TOKEN")
        try:
            port = int(parts[2])
            token = bytes.fromhex(parts[3])
        except ValueError:
            raise CommInputError("unique_id", "port must be an integer and token hex") from None
        if len(token) != TOKEN_BYTES:
            raise CommInputError("unique_id", f"token must be {TOKEN_BYTES} bytes")
        return cls(parts[1], port, token)

    @property
    def label(self) -> str:
        """Short name of the communicator in messages."""
        return self.token.hex()[:8]


def get_unique_id(host: str = "127.0.0.1", *, timeout_s: float = 120.0) -> UniqueId:
    """Make a unique id and start its bootstrap root in this process (a daemon thread).

    The root collects one registration per rank, checks that they agree, and sends everyone
    the rank table; it gives up (and tells the ranks that came) after ``timeout_s``.
    """
    listener = socket.create_server((host, 0))
    port = listener.getsockname()[1]
    uid = UniqueId(host, port, secrets.token_bytes(TOKEN_BYTES))
    thread = threading.Thread(
        target=_bootstrap_root,
        args=(listener, uid, timeout_s),
        name=f"pgcx-root-{uid.label}",
        daemon=True,
    )
    thread.start()
    return uid


def _bootstrap_root(listener: socket.socket, uid: UniqueId, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    conns: dict[int, socket.socket] = {}
    table: dict[int, Mapping[str, object]] = {}
    nranks: int | None = None
    error: str | None = None
    with listener:
        try:
            while nranks is None or len(table) < nranks:
                left = deadline - time.monotonic()
                if left <= 0:
                    have = len(table)
                    error = f"bootstrap root gave up: {have} of {nranks or '?'} ranks joined"
                    error += f" within {timeout_s:g} s"
                    break
                listener.settimeout(left)
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    msg = recv_json(conn)
                except (OSError, CommError, ValueError):
                    conn.close()
                    continue
                if msg.get("token") != uid.token.hex():
                    send_json(conn, {"error": "unique id token does not match this root"})
                    conn.close()
                    continue
                rank, size = msg.get("rank"), msg.get("nranks")
                if not isinstance(rank, int) or not isinstance(size, int):
                    conn.close()
                    continue
                if nranks is None:
                    nranks = size
                problem = None
                if size != nranks:
                    problem = f"rank {rank} says nranks={size}, an earlier rank said {nranks}"
                elif not 0 <= rank < nranks:
                    problem = f"rank {rank} is outside 0..{nranks - 1}"
                elif rank in table:
                    problem = f"rank {rank} joined twice"
                if problem is not None:
                    send_json(conn, {"error": problem})
                    conn.close()
                    continue
                conns[rank] = conn
                table[rank] = msg
        except OSError as exc:
            error = f"bootstrap root failed: {exc}"
        reply: dict[str, object]
        if error is None:
            reply = {"ranks": [dict(table[r], token=None) for r in range(len(table))]}
        else:
            reply = {"error": error}
        for conn in conns.values():
            with contextlib.suppress(OSError):
                send_json(conn, reply)
            conn.close()


def send_json(sock: socket.socket, obj: Mapping[str, object]) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_json(sock: socket.socket) -> dict[str, object]:
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > _MAX_BOOTSTRAP_MESSAGE:
        raise ValueError(f"bootstrap message of {size} bytes is too large")
    obj = json.loads(_recv_exact(sock, size))
    if not isinstance(obj, dict):
        raise ValueError("bootstrap message must be a JSON object")
    return obj


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("connection closed")
        got += k
    return bytes(buf)


def tune(sock: socket.socket) -> None:
    """Low latency for small frames, large kernel buffers for large ones."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)


@dataclass(slots=True)
class Header:
    kind: int
    comm: bytes
    seq: int
    step: int
    part: int
    """Slice of the step's transfer (large transfers go as several frames)."""
    nbytes: int


class _SendItem:
    __slots__ = ("done", "error", "header", "payload")

    def __init__(self, header: bytes, payload: memoryview | None) -> None:
        self.header = header
        self.payload = payload
        self.done = threading.Event()
        self.error: BaseException | None = None


class Connection:
    """One TCP connection to one peer rank: a sender thread and blocking framed receives.

    Sends are queued to the sender thread so a rank can send to its ring successor while it
    receives from its predecessor (both sides of a full-duplex socket busy at once).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        token: bytes,
        peer: int,
        describe_peer: str,
        timeout_s: float,
    ) -> None:
        tune(sock)
        sock.settimeout(timeout_s)
        self.sock = sock
        self.token = token
        self.peer = peer
        self.describe_peer = describe_peer
        self.timeout_s = timeout_s
        self._queue: queue.SimpleQueue[_SendItem | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(
            target=self._send_loop, name=f"pgcx-send-{peer}", daemon=True
        )
        self._thread.start()

    # -- sending --------------------------------------------------------------------------

    def send(
        self, kind: int, seq: int, step: int, payload: memoryview | None, part: int = 0
    ) -> _SendItem:
        nbytes = 0 if payload is None else payload.nbytes
        header = _HEADER.pack(MAGIC, kind, self.token, seq, step, part, nbytes)
        item = _SendItem(header, payload)
        if self._closed:
            item.error = PeerLostError(f"connection to {self.describe_peer} is closed")
            item.done.set()
        else:
            self._queue.put(item)
        return item

    def wait_sent(self, item: _SendItem, what: str) -> None:
        if not item.done.wait(self.timeout_s):
            raise CommTimeoutError(
                f"{what}: sending to {self.describe_peer} made no progress for "
                f"{self.timeout_s:g} s (the peer stopped reading)"
            )
        if item.error is not None:
            if isinstance(item.error, CommError):
                raise item.error
            raise PeerLostError(
                f"{what}: lost {self.describe_peer} while sending ({item.error})"
            ) from item.error

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item.payload is None or item.payload.nbytes == 0:
                    self.sock.sendall(item.header)
                else:
                    self._send_two(item.header, item.payload)
            except BaseException as exc:  # reported to whoever waits on the item
                item.error = exc
            finally:
                item.done.set()

    def _send_two(self, header: bytes, payload: memoryview) -> None:
        """Header and payload in one system call where the kernel takes both."""
        sent = self.sock.sendmsg([header, payload])
        if sent < len(header):
            self.sock.sendall(header[sent:])
            sent = len(header)
        rest = sent - len(header)
        if rest < payload.nbytes:
            self.sock.sendall(payload[rest:])

    # -- receiving ------------------------------------------------------------------------

    def recv_header(self, what: str) -> Header:
        raw = self._recv_exact_bytes(HEADER_BYTES, what)
        magic, kind, comm, seq, step, part, nbytes = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise CommProtocolError(f"{what}: {self.describe_peer} sent a frame without magic")
        if comm != self.token:
            raise CommProtocolError(
                f"{what}: {self.describe_peer} sent a frame of communicator "
                f"{comm.hex()[:8]} on this communicator's connection"
            )
        header = Header(kind, comm, seq, step, part, nbytes)
        if kind == KIND_ABORT:
            reason = self._recv_exact_bytes(nbytes, what).decode(errors="replace")
            raise CommAbortedError(f"{what}: {self.describe_peer} aborted: {reason}")
        return header

    def expect(self, kind: int, seq: int, step: int, nbytes: int, what: str, part: int = 0) -> None:
        h = self.recv_header(what)
        if (h.kind, h.seq, h.step, h.part, h.nbytes) != (kind, seq, step, part, nbytes):
            raise CommProtocolError(
                f"{what}: expected from {self.describe_peer} frame kind={kind} seq={seq} "
                f"step={step}.{part} of {nbytes} bytes, got kind={h.kind} seq={h.seq} "
                f"step={h.step}.{h.part} of {h.nbytes} bytes (ranks called different "
                "collectives, or with different sizes)"
            )

    def recv_into(self, view: memoryview, what: str) -> None:
        got = 0
        n = view.nbytes
        sock = self.sock
        while got < n:
            try:
                k = sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise CommTimeoutError(
                    f"{what}: {self.describe_peer} sent nothing for {self.timeout_s:g} s "
                    "(stalled or unreachable)"
                ) from None
            except OSError as exc:
                raise PeerLostError(f"{what}: lost {self.describe_peer} ({exc})") from exc
            if k == 0:
                raise PeerLostError(
                    f"{what}: {self.describe_peer} closed the connection "
                    "(its process exited or it aborted)"
                )
            got += k

    def _recv_exact_bytes(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        self.recv_into(memoryview(buf), what)
        return bytes(buf)

    # -- closing --------------------------------------------------------------------------

    def send_abort(self, reason: str, wait_s: float = 0.5) -> None:
        """Best effort: tell the peer why this rank gives up, then stop sending."""
        if self._closed:
            return
        item = self.send(KIND_ABORT, 0, 0, memoryview(reason.encode()[:4000]))
        item.done.wait(wait_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=1.0)


@dataclass(frozen=True, slots=True)
class PeerTable:
    """What bootstrap returns: every rank's registration, in rank order."""

    ranks: tuple[Mapping[str, object], ...]


def bootstrap(
    uid: UniqueId,
    nranks: int,
    rank: int,
    registration: Mapping[str, object],
    *,
    host: str,
    timeout_s: float,
    describe: Callable[[int, Mapping[str, object]], str],
) -> tuple[PeerTable, dict[int, Connection]]:
    """Join the communicator: register with the root, then connect to every peer.

    Rank ``r`` connects to every lower rank and accepts every higher one; the listening socket
    exists before the root hands out its address, so no connect races a listen.
    """
    if nranks < 1:
        raise CommInputError("nranks", f"must be >= 1, got {nranks}")
    if not 0 <= rank < nranks:
        raise CommInputError("rank", f"must be in 0..{nranks - 1}, got {rank}")
    listener = socket.create_server((host, 0))
    deadline = time.monotonic() + timeout_s
    conns: dict[int, Connection] = {}
    try:
        my_port = listener.getsockname()[1]
        msg = dict(registration)
        msg.update(
            token=uid.token.hex(),
            rank=rank,
            nranks=nranks,
            host=host,
            port=my_port,
            pid=os.getpid(),
        )
        try:
            root = socket.create_connection((uid.host, uid.port), timeout=timeout_s)
        except OSError as exc:
            raise PeerLostError(
                f"communicator {uid.label}: cannot reach the bootstrap root at "
                f"{uid.host}:{uid.port} ({exc})"
            ) from exc
        with root:
            root.settimeout(timeout_s)
            send_json(root, msg)
            try:
                reply = recv_json(root)
            except TimeoutError:
                raise CommTimeoutError(
                    f"communicator {uid.label}: rank {rank} waited {timeout_s:g} s for the "
                    f"other ranks to join"
                ) from None
            except (OSError, ValueError) as exc:
                raise PeerLostError(
                    f"communicator {uid.label}: bootstrap root closed before the rank table "
                    f"came ({exc})"
                ) from exc
        if "error" in reply:
            raise CommAbortedError(f"communicator {uid.label}: {reply['error']}")
        raw = reply.get("ranks")
        if not isinstance(raw, list) or len(raw) != nranks:
            raise CommProtocolError(f"communicator {uid.label}: malformed rank table")
        table = PeerTable(tuple(raw))
        for peer in range(rank):
            entry = table.ranks[peer]
            left = max(0.1, deadline - time.monotonic())
            try:
                sock = socket.create_connection(
                    (str(entry["host"]), int(str(entry["port"]))), timeout=left
                )
            except OSError as exc:
                raise PeerLostError(
                    f"communicator {uid.label}: rank {rank} cannot connect to "
                    f"{describe(peer, entry)} ({exc})"
                ) from exc
            sock.settimeout(left)
            send_json(sock, {"token": uid.token.hex(), "rank": rank})
            conns[peer] = Connection(
                sock,
                token=uid.token,
                peer=peer,
                describe_peer=describe(peer, entry),
                timeout_s=timeout_s,
            )
        while len(conns) < nranks - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(nranks)) - set(conns) - {rank})
                raise CommTimeoutError(
                    f"communicator {uid.label}: rank {rank} waited {timeout_s:g} s for "
                    f"ranks {missing} to connect"
                )
            listener.settimeout(left)
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(left)
            try:
                hello = recv_json(sock)
            except (OSError, ValueError):
                sock.close()
                continue
            peer_rank = hello.get("rank")
            if (
                hello.get("token") != uid.token.hex()
                or not isinstance(peer_rank, int)
                or not rank < peer_rank < nranks
                or peer_rank in conns
            ):
                sock.close()
                continue
            conns[peer_rank] = Connection(
                sock,
                token=uid.token,
                peer=peer_rank,
                describe_peer=describe(peer_rank, table.ranks[peer_rank]),
                timeout_s=timeout_s,
            )
    except BaseException:
        for conn in conns.values():
            conn.close()
        raise
    finally:
        listener.close()
    return table, conns
