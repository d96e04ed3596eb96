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
from collections.abc import Iterable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Python-level handler while waiting: the wake-up fd already carries the signal."""


def wait_for_stop_signal(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> signal.Signals:
    """Block until one of ``signals`` arrives; return it. Must run in the main thread.

    A signal that arrived before the call was already turned into the default handler's
    exception (KeyboardInterrupt, or whatever the caller installed); the handlers in place are
    restored on return.
    """
    wanted = {int(s) for s in signals}
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    # Wake-up fd first, then the handlers: a signal between the two still reaches the old
    # handler (an exception the caller handles) instead of vanishing.
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _ignore) for s in wanted}
    try:
        while True:
            for signum in reader.recv(64):
                if signum in wanted:
                    return signal.Signals(signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(previous_fd)
        reader.close()
        writer.close()
