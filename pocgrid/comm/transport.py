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
import mmap
import os
import queue
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

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
# A collective frame whose payload waits in the sender's shared-memory lane, not on the socket.
LANE_FLAG: Final = 0x40
SHM_ENV: Final = "POCGRID_COMM_SHM"
"""``0`` turns shared-memory lanes off (every payload over TCP, as between hosts)."""
LANE_SLOT_BYTES: Final = int(os.environ.get("POCGRID_COMM_LANE_SLOT_BYTES", 2 << 20))
LANE_SLOTS: Final = int(os.environ.get("POCGRID_COMM_LANE_SLOTS", 4))
LANE_MIN_BYTES: Final = 64 << 10
"""Smaller payloads ride in the frame itself: one system call beats a slot hand-off."""
_LANE_CTRL_BYTES: Final = 64
_LANE_DIR: Final = "/dev/shm"


@dataclass(frozen=True, slots=True)
class UniqueId:
    """What every rank needs to join one communicator: the bootstrap root and a random token.

    Like ``ncclUniqueId``, it is made once (by any process, which then hosts the bootstrap
    root until every rank has joined) and handed to every rank out of band.
    """

    host: str
    port: int
    token: bytes
    joined: threading.Event | None = field(default=None, compare=False, repr=False)
    """Set by the bootstrap root of this process once every rank has its rank table; only on
    the id ``get_unique_id`` returned (a decoded id has none), so its maker (the evaluator)
    can tell "all ranks joined" from "still bootstrapping" without asking any rank."""

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
    uid = UniqueId(host, port, secrets.token_bytes(TOKEN_BYTES), threading.Event())
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
        if error is None and uid.joined is not None:
            uid.joined.set()


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


def host_id() -> str:
    """Ranks with the same id share a kernel, so a shared-memory lane may join them (whether
    it can, e.g. between containers without a common /dev/shm, the peer's open decides)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Lane:
    """One direction of a same-host pair: a ring of slots in a shared-memory file.

    The sender copies a frame's payload into the next slot and sends only the header over
    the TCP connection; the receiver reads (or reduces) the payload straight out of the slot
    and then advances the consumed counter in the lane's first bytes, which frees the slot.
    That saves both kernel copies of loopback TCP, and a reduction reads the peer's data
    where it lies instead of after copying it into its own buffer. Frames on one connection
    are consumed in order, so one counter is the whole flow control. The header still goes
    over TCP, so a peer that dies is noticed as before (its socket closes).

    A sender that finds the ring full sleeps on the lane's credit pipe (a FIFO beside the
    file), into which the receiver writes a byte per slot it frees: woken at once, no
    polling. The counter is written only by the receiver and read only by the sender; x86
    keeps a store behind the loads before it, and the header's system calls order the slot
    writes.
    """

    def __init__(
        self, mm: mmap.mmap, credit_fd: int, path: str, slots: int, slot_bytes: int
    ) -> None:
        self._mm = mm
        self._credit_fd = credit_fd
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.consumed: npt.NDArray[np.uint64] = np.ndarray((1,), np.uint64, buffer=mm)
        self._data: npt.NDArray[np.uint8] = np.ndarray(
            (slots * slot_bytes,), np.uint8, buffer=mm, offset=_LANE_CTRL_BYTES
        )
        self.count = 0
        """Slots reserved, in frame order (sender side), or frames consumed (receiver)."""

    @staticmethod
    def size_of(slots: int, slot_bytes: int) -> int:
        return _LANE_CTRL_BYTES + slots * slot_bytes

    @classmethod
    def create(cls, label: str, slots: int, slot_bytes: int) -> Lane | None:
        """A new lane file, its space reserved (tmpfs would otherwise kill the process with
        SIGBUS when full); None where shared memory is unavailable or full."""
        if os.environ.get(SHM_ENV, "1") == "0" or not os.path.isdir(_LANE_DIR):
            return None
        path = os.path.join(_LANE_DIR, f"pgcx-{label}-{secrets.token_hex(6)}")
        size = cls.size_of(slots, slot_bytes)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError:
            return None
        try:
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
            os.mkfifo(path + ".credit", 0o600)
            credit = _open_credit(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path + ".credit")
            os.unlink(path)
            return None
        finally:
            os.close(fd)
        return cls(mm, credit, path, slots, slot_bytes)

    @classmethod
    def open(cls, path: str, slots: int, slot_bytes: int) -> Lane | None:
        """The peer's lane, or None if this process cannot see or map it."""
        if os.environ.get(SHM_ENV, "1") == "0" or os.path.dirname(path) != _LANE_DIR:
            return None
        size = cls.size_of(slots, slot_bytes)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != size:
                return None
            mm = mmap.mmap(fd, size)
            credit = _open_credit(path)
        except OSError:
            return None
        finally:
            os.close(fd)
        return cls(mm, credit, path, slots, slot_bytes)

    def unlink(self) -> None:
        """Remove the name once the peer has mapped it (or refused): the mapping stays, and a
        process that dies later leaves nothing in /dev/shm."""
        for name in (self.path, self.path + ".credit"):
            with contextlib.suppress(OSError):
                os.unlink(name)

    def slot(self, index: int, nbytes: int) -> npt.NDArray[np.uint8]:
        at = (index % self.slots) * self.slot_bytes
        return self._data[at : at + nbytes]

    def is_free(self, index: int) -> bool:
        """The receiver has consumed the frame that last used slot ``index``'s place."""
        return index - int(self.consumed[0]) < self.slots

    def reserve(self) -> int:
        index = self.count
        self.count += 1
        return index

    def release(self) -> None:
        """Receiver: the oldest frame has been read; its slot is free (and the sender, if it
        waits, is woken)."""
        self.count += 1
        self.consumed[0] = self.count
        # A full pipe means the sender has wake-ups enough queued.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._credit_fd, b"\0")

    def wait_credit(self, seconds: float) -> None:
        """Sender: sleep until the receiver frees a slot (or ``seconds`` pass), then drain the
        wake-ups so the pipe never fills while this side keeps up."""
        with contextlib.suppress(OSError, ValueError):
            select.select([self._credit_fd], [], [], max(0.0, seconds))
            with contextlib.suppress(BlockingIOError):
                os.read(self._credit_fd, 1 << 16)

    def close(self) -> None:
        # Views of the map may still be alive in a caller; the map goes with them.
        self.consumed = np.zeros(1, np.uint64)
        self._data = np.zeros(0, np.uint8)
        with contextlib.suppress(OSError):
            os.close(self._credit_fd)
        self._credit_fd = -1
        with contextlib.suppress(BufferError):
            self._mm.close()


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
    __slots__ = ("done", "error", "filled", "header", "payload", "slot")

    def __init__(
        self, header: bytes, payload: memoryview | None, slot: int | None, filled: bool = False
    ) -> None:
        self.header = header
        self.payload = payload
        self.slot = slot
        """Lane slot index of the payload (None: the payload goes on the socket)."""
        self.filled = filled
        """The slot already holds the payload (written there by :meth:`Connection.claim`'s
        caller)."""
        self.done = threading.Event()
        self.error: BaseException | None = None


class Connection:
    """One TCP connection to one peer rank: a sender thread and blocking framed receives.

    Sends are queued to the sender thread so a rank can send to its ring successor while it
    receives from its predecessor (both sides of a full-duplex socket busy at once). With
    ``out_lane``/``in_lane`` (same host) large collective payloads go through shared memory
    (:class:`Lane`) and only their headers over the socket.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        token: bytes,
        peer: int,
        describe_peer: str,
        timeout_s: float,
        out_lane: Lane | None = None,
        in_lane: Lane | None = None,
    ) -> None:
        tune(sock)
        sock.settimeout(timeout_s)
        self.sock = sock
        self.token = token
        self.peer = peer
        self.describe_peer = describe_peer
        self.timeout_s = timeout_s
        self.out_lane = out_lane
        self.in_lane = in_lane
        self._in_slot: int | None = None
        """Payload bytes of the received header that wait in ``in_lane``'s next slot."""
        self._claimed: int | None = None
        self._queue: queue.SimpleQueue[_SendItem | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(
            target=self._send_loop, name=f"pgcx-send-{peer}", daemon=True
        )
        self._thread.start()

    @property
    def transport(self) -> str:
        """``shm`` when both directions have a lane, ``tcp`` when neither, else which does."""
        if self.out_lane and self.in_lane:
            return "shm"
        if self.out_lane:
            return "shm out/tcp in"
        if self.in_lane:
            return "tcp out/shm in"
        return "tcp"

    # -- sending --------------------------------------------------------------------------

    def send(
        self, kind: int, seq: int, step: int, payload: memoryview | None, part: int = 0
    ) -> _SendItem:
        nbytes = 0 if payload is None else payload.nbytes
        lane = self.out_lane
        slot = None
        if kind == KIND_COLLECTIVE and lane is not None and self.fits_lane(nbytes):
            # Reserved now, in the order frames are queued, so slot order is frame order.
            slot = lane.reserve()
        wire = kind if slot is None else kind | LANE_FLAG
        header = _HEADER.pack(MAGIC, wire, self.token, seq, step, part, nbytes)
        return self._queue_item(_SendItem(header, payload, slot))

    def fits_lane(self, nbytes: int) -> bool:
        lane = self.out_lane
        return lane is not None and LANE_MIN_BYTES <= nbytes <= lane.slot_bytes

    def claim(self, nbytes: int) -> npt.NDArray[np.uint8] | None:
        """The next lane slot, for the caller to write a collective payload into directly
        (a reduction's output, saving the copy into the slot), if it is free right now;
        then :meth:`send_claimed`. None: use :meth:`send` (never waits here, so the caller
        keeps receiving meanwhile)."""
        lane = self.out_lane
        if lane is None or not self.fits_lane(nbytes) or not lane.is_free(lane.count):
            return None
        self._claimed = lane.count
        return lane.slot(lane.count, nbytes)

    def send_claimed(self, seq: int, step: int, nbytes: int, part: int = 0) -> _SendItem:
        """Send the header of the payload written into the slot :meth:`claim` returned."""
        lane = self.out_lane
        assert lane is not None and self._claimed == lane.count, "send_claimed without claim"
        self._claimed = None
        header = _HEADER.pack(
            MAGIC, KIND_COLLECTIVE | LANE_FLAG, self.token, seq, step, part, nbytes
        )
        return self._queue_item(_SendItem(header, None, lane.reserve(), filled=True))

    def _queue_item(self, item: _SendItem) -> _SendItem:
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
                if item.slot is not None:
                    if not item.filled:
                        assert item.payload is not None
                        self._to_lane(item.slot, item.payload)
                    self.sock.sendall(item.header)
                elif item.payload is None or item.payload.nbytes == 0:
                    self.sock.sendall(item.header)
                else:
                    self._send_two(item.header, item.payload)
            except BaseException as exc:  # reported to whoever waits on the item
                item.error = exc
            finally:
                item.done.set()

    def _to_lane(self, index: int, payload: memoryview) -> None:
        """Copy ``payload`` into slot ``index`` once the peer has freed it."""
        lane = self.out_lane
        assert lane is not None
        self._wait_slot(lane, index)
        lane.slot(index, payload.nbytes)[...] = np.frombuffer(payload, dtype=np.uint8)

    def _wait_slot(self, lane: Lane, index: int) -> None:
        """Wait until the peer has consumed the frame that held slot ``index``'s place. It
        frees slots as it reads them, so a wait happens only when this side runs ahead by
        the whole ring; the wait sleeps on the lane's credit pipe, waking every 0.1 s to
        notice a closed connection."""
        if lane.is_free(index):
            return
        deadline = time.monotonic() + self.timeout_s
        while not lane.is_free(index):
            if self._closed:
                raise PeerLostError(f"connection to {self.describe_peer} is closed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommTimeoutError(
                    f"sending to {self.describe_peer}: its shared-memory lane stayed full for "
                    f"{self.timeout_s:g} s (the peer stopped reading)"
                )
            lane.wait_credit(min(left, 0.1))

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
        if self._in_slot is not None:
            raise CommProtocolError(f"{what}: the payload of the last frame was not taken")
        raw = self._recv_exact_bytes(HEADER_BYTES, what)
        magic, kind, comm, seq, step, part, nbytes = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise CommProtocolError(f"{what}: {self.describe_peer} sent a frame without magic")
        if comm != self.token:
            raise CommProtocolError(
                f"{what}: {self.describe_peer} sent a frame of communicator "
                f"{comm.hex()[:8]} on this communicator's connection"
            )
        if kind & LANE_FLAG:
            kind &= ~LANE_FLAG
            if self.in_lane is None or kind != KIND_COLLECTIVE or nbytes > self.in_lane.slot_bytes:
                raise CommProtocolError(
                    f"{what}: {self.describe_peer} sent a shared-memory frame this "
                    "connection has no lane for"
                )
            self._in_slot = nbytes
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

    def take(self) -> npt.NDArray[np.uint8] | None:
        """The last header's payload where it lies in the lane (read it, then
        :meth:`release`), or None when it comes over the socket (:meth:`recv_into`)."""
        if self._in_slot is None:
            return None
        assert self.in_lane is not None
        return self.in_lane.slot(self.in_lane.count, self._in_slot)

    def release(self) -> None:
        """The taken payload has been read: its slot is the sender's again."""
        assert self.in_lane is not None and self._in_slot is not None
        self._in_slot = None
        self.in_lane.release()

    def recv_into(self, view: memoryview, what: str) -> None:
        """The last header's payload into ``view``, from the lane or the socket."""
        slot = self.take()
        if slot is not None:
            np.frombuffer(view, dtype=np.uint8)[...] = slot
            self.release()
            return
        self._sock_recv_into(view, what)

    def _sock_recv_into(self, view: memoryview, what: str) -> None:
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
        self._sock_recv_into(memoryview(buf), what)
        return bytes(buf)

    # -- the bare transport (benchmark ceiling) -------------------------------------------

    def push_raw(self, data: memoryview, *, tcp: bool = False) -> None:
        """Send ``data`` to the peer as this connection moves bytes, with nothing of a
        collective: through the lane slot by slot (a bare header each), else (or with
        ``tcp``) one ``sendall``. Only between collectives (the sender thread is idle)."""
        lane = None if tcp else self.out_lane
        if lane is None:
            self.sock.sendall(data)
            return
        header = _HEADER.pack(MAGIC, KIND_COLLECTIVE | LANE_FLAG, self.token, 0, 0, 0, 0)
        for at in range(0, data.nbytes, lane.slot_bytes):
            self._to_lane(lane.reserve(), data[at : at + lane.slot_bytes])
            self.sock.sendall(header)

    def pull_raw(self, view: memoryview, what: str, *, tcp: bool = False) -> None:
        """Receive what the peer's :meth:`push_raw` sends into ``view``."""
        lane = None if tcp else self.in_lane
        if lane is None:
            self._sock_recv_into(view, what)
            return
        notice = memoryview(bytearray(HEADER_BYTES))
        out = np.frombuffer(view, dtype=np.uint8)
        for at in range(0, view.nbytes, lane.slot_bytes):
            self._sock_recv_into(notice, what)
            n = min(lane.slot_bytes, view.nbytes - at)
            out[at : at + n] = lane.slot(lane.count, n)
            lane.release()

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
        for lane in (self.out_lane, self.in_lane):
            if lane is not None:
                lane.close()


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
    socks: dict[int, socket.socket] = {}
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
            host_id=host_id(),
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
            socks[peer] = sock
        while len(socks) < nranks - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(nranks)) - set(socks) - {rank})
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
                or peer_rank in socks
            ):
                sock.close()
                continue
            sock.settimeout(left)
            socks[peer_rank] = sock
        lanes = _open_lanes(uid, rank, table, socks)
        for peer, sock in sorted(socks.items()):
            out_lane, in_lane = lanes.get(peer, (None, None))
            conns[peer] = Connection(
                sock,
                token=uid.token,
                peer=peer,
                describe_peer=describe(peer, table.ranks[peer]),
                timeout_s=timeout_s,
                out_lane=out_lane,
                in_lane=in_lane,
            )
    except BaseException:
        for conn in conns.values():
            conn.close()
        for peer, sock in socks.items():
            if peer not in conns:
                sock.close()
        raise
    finally:
        listener.close()
    return table, conns


def _open_credit(path: str) -> int:
    """The lane's credit FIFO, read-write (so opening never waits for the other side) and
    non-blocking (a full pipe never stalls the receiver)."""
    return os.open(path + ".credit", os.O_RDWR | os.O_NONBLOCK)


def _open_lanes(
    uid: UniqueId, rank: int, table: PeerTable, socks: Mapping[int, socket.socket]
) -> dict[int, tuple[Lane | None, Lane | None]]:
    """Shared-memory lanes with every peer on this host: each rank creates its outgoing lane
    and offers its path, opens the peer's, says whether it could, and unlinks its own once
    the peer has answered. A lane the peer cannot open (another container, /dev/shm full,
    lanes turned off) leaves that direction on TCP."""
    mine = host_id()
    offers: dict[int, Lane | None] = {}
    lanes: dict[int, tuple[Lane | None, Lane | None]] = {}
    try:
        for peer, sock in sorted(socks.items()):
            same = bool(mine) and table.ranks[peer].get("host_id") == mine
            lane = (
                Lane.create(f"{uid.label}-{rank}-{peer}", LANE_SLOTS, LANE_SLOT_BYTES)
                if same
                else None
            )
            offers[peer] = lane
            send_json(
                sock,
                {
                    "lane": lane.path if lane else "",
                    "slots": LANE_SLOTS,
                    "slot_bytes": LANE_SLOT_BYTES,
                },
            )
        incoming: dict[int, Lane | None] = {}
        for peer, sock in sorted(socks.items()):
            offer = recv_json(sock)
            path, slots, slot_bytes = offer.get("lane"), offer.get("slots"), offer.get("slot_bytes")
            lane = None
            if (
                path
                and isinstance(path, str)
                and isinstance(slots, int)
                and isinstance(slot_bytes, int)
            ):
                lane = Lane.open(path, slots, slot_bytes)
            incoming[peer] = lane
            send_json(sock, {"opened": lane is not None})
        for peer, sock in sorted(socks.items()):
            answer = recv_json(sock)
            out = offers[peer]
            if out is not None:
                out.unlink()
                if answer.get("opened") is not True:
                    out.close()
                    out = None
            lanes[peer] = (out, incoming[peer])
    except BaseException:
        for lane in offers.values():
            if lane is not None:
                lane.unlink()
        raise
    return lanes
