"""Wait for SIGINT/SIGTERM in a process that also runs gRPC's threads.

The kernel hands a process-directed signal to any thread that does not block it. The launcher
talks gRPC (health probes), so gRPC's C threads exist and never block SIGINT/SIGTERM: blocking
the signals in the main thread and calling ``sigwait`` loses a signal that arrives between the
two calls (it goes to a gRPC thread, whose C handler only sets a flag the main thread never
checks while it sits in ``sigwait``). Python's wake-up fd does not have that gap: whichever
thread runs the C-level handler writes the signal number to it, and the main thread is blocked
reading it.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterable
from types import FrameType

# SIGHUP: the terminal of a foreground `pocgrid up` closed; stop in order then too.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Python-level handler while waiting: the wake-up fd already carries the signal."""


class StopSignals:
    """While entered, ``wait(timeout)`` blocks until one of ``signals`` arrives (returns it) or
    the timeout passes (returns None), so a supervisor can do its rounds between waits without
    a gap in which a signal is lost. Enter in the main thread.

    A signal that arrived before entering was already turned into the default handler's
    exception (KeyboardInterrupt, or whatever the caller installed); the handlers in place are
    restored on exit.
    """

    def __init__(self, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        self._wanted = {int(s) for s in signals}

    def __enter__(self) -> StopSignals:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        # Wake-up fd first, then the handlers: a signal between the two still reaches the old
        # handler (an exception the caller handles) instead of vanishing.
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, _ignore) for s in self._wanted}
        return self

    def wait(self, timeout_s: float | None = None) -> signal.Signals | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._reader.settimeout(left)
            try:
                received = self._reader.recv(64)
            except TimeoutError:
                return None
            for signum in received:
                if signum in self._wanted:
                    return signal.Signals(signum)

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()


def wait_for_stop_signal(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> signal.Signals:
    """Block until one of ``signals`` arrives; return it. Must run in the main thread."""
    with StopSignals(signals) as stop:
        got = stop.wait()
    assert got is not None
    return got
