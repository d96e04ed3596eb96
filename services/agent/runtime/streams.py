"""Virtual-time streams: queued device work whose durations the performance model supplies.

The clock is the node's host time in emulation. Submitting work never advances it (launches
are asynchronous, as on every vendor runtime); synchronizing advances it to when the awaited
work ends. Work on one stream runs in order; work on different streams of a device overlaps,
with no contention modelled here because the durations already come from the performance
model. Time is kept in integer nanoseconds so results are exact and identical on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

_NS_PER_S = 1_000_000_000


def to_ns(seconds: float) -> int:
    return round(seconds * _NS_PER_S)


def to_seconds(ns: int) -> float:
    return ns / _NS_PER_S


class VirtualClock:
    """The node's virtual host time, shared by every stream of a runtime."""

    __slots__ = ("_now_ns",)

    def __init__(self) -> None:
        self._now_ns = 0

    @property
    def now_ns(self) -> int:
        return self._now_ns

    @property
    def now(self) -> float:
        return to_seconds(self._now_ns)

    def advance_to(self, ns: int) -> int:
        """Move time forward to ``ns`` (never backwards) and return the new time."""
        self._now_ns = max(self._now_ns, ns)
        return self._now_ns


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One queued piece of work and when it runs in virtual time."""

    label: str
    start_ns: int
    end_ns: int

    @property
    def start(self) -> float:
        return to_seconds(self.start_ns)

    @property
    def end(self) -> float:
        return to_seconds(self.end_ns)


class VirtualStream:
    """An in-order work queue on one device."""

    __slots__ = ("_check", "_clock", "_history", "_tail_ns", "device_index", "name")

    def __init__(
        self,
        device_index: int,
        name: str,
        clock: VirtualClock,
        check: Callable[[], None],
    ) -> None:
        self.device_index = device_index
        self.name = name
        self._clock = clock
        # Called before every submit; raises the vendor's error when the device has failed.
        self._check = check
        self._tail_ns = 0
        self._history: list[WorkItem] = []

    @property
    def now(self) -> float:
        """Current virtual host time, in seconds."""
        return self._clock.now

    @property
    def busy_until(self) -> float:
        """When the last queued item finishes (or ``now`` if the stream is idle)."""
        return to_seconds(max(self._tail_ns, self._clock.now_ns))

    @property
    def history(self) -> tuple[WorkItem, ...]:
        return tuple(self._history)

    def submit(self, duration_s: float, label: str = "") -> float:
        """Queue work lasting ``duration_s``; return its virtual completion time in seconds."""
        if not duration_s >= 0.0 or duration_s == float("inf"):
            # `not >=` also rejects NaN, which would otherwise poison every later time.
            raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
        self._check()
        start = max(self._tail_ns, self._clock.now_ns)
        item = WorkItem(label=label, start_ns=start, end_ns=start + to_ns(duration_s))
        self._history.append(item)
        self._tail_ns = item.end_ns
        return item.end

    def wait_for(self, other: VirtualStream) -> None:
        """Make later work here start after everything queued on ``other`` (an event wait)."""
        self._tail_ns = max(self._tail_ns, other._tail_ns)

    def synchronize(self) -> float:
        """Block the host until this stream drains; return the new virtual time."""
        return to_seconds(self._clock.advance_to(self._tail_ns))

    def query(self) -> bool:
        """True when all queued work has finished at the current virtual time."""
        return self._tail_ns <= self._clock.now_ns
