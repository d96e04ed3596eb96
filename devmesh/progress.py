"""What `pocgrid up` shows while it waits: a spinner line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_FRAMES = "|/-\\"
_REDRAW_S = 0.1


class Progress:
    """``step`` reports something done; ``waiting`` what it waits for now.

    On a terminal, ``waiting`` redraws one line (a spinner, the message, the time so far) and a
    step is printed above it. Elsewhere (a pipe, a log, CI) each step is one line and a wait is
    printed only when what it waits for changes, so the output stays readable and short.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self._out = sys.stdout if stream is None else stream
        self._tty = self._out.isatty() if tty is None else tty
        self._started = time.monotonic()
        self._frame = 0
        self._last_wait = ""
        self._drawn = False
        self._drawn_at = 0.0

    def step(self, message: str) -> None:
        self._clear()
        self._out.write(f"  {message}\n")
        self._out.flush()

    def waiting(self, message: str) -> None:
        if self._tty:
            now = time.monotonic()
            if message == self._last_wait and now - self._drawn_at < _REDRAW_S:
                return
            self._drawn_at = now
            self._frame = (self._frame + 1) % len(_FRAMES)
            line = f"{_FRAMES[self._frame]} {message} ({time.monotonic() - self._started:.0f} s)"
            self._out.write("\r\x1b[2K" + line)
            self._drawn = True
        elif message != self._last_wait:
            self._out.write(f"  ... {message}\n")
        self._last_wait = message
        self._out.flush()

    def done(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self._out.write("\r\x1b[2K")
            self._drawn = False
