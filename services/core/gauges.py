"""Gauges whose values a service samples in its event loop and the metric readers observe.

OpenTelemetry calls an observable gauge's callback from the reader's thread (the Prometheus
HTTP server's, the OTLP exporter's), where nothing async can run: the values a service can only
get by awaiting (a database count, a JetStream consumer's backlog) are sampled on the service's
loop every ``POCGRID_GAUGE_INTERVAL_MS`` and the callback reports the latest sample. Each sample
replaces the whole set, so an attribute set that is gone (a chip type that left the pool) stops
being reported instead of repeating its last value forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.core.logging import get_logger

log = get_logger()

Attributes = tuple[tuple[str, str], ...]


def attrs(**values: str) -> Attributes:
    """An attribute set as a hashable key: ``attrs(chip="ascend-910b2")``."""
    return tuple(sorted(values.items()))


class GaugeSet:
    """One observable gauge: the value of each attribute set as last sampled."""

    def __init__(self, meter: Meter, name: str, *, unit: str, description: str) -> None:
        self.name = name
        # Replaced whole, never mutated: the reader's thread reads whichever dict is current.
        self._values: dict[Attributes, float] = {}
        meter.create_observable_gauge(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def replace(self, values: Mapping[Attributes, float]) -> None:
        self._values = dict(values)

    def set(self, value: float, key: Attributes = ()) -> None:
        """Change one attribute set's value, keeping the others."""
        self._values = {**self._values, key: value}

    def values(self) -> dict[Attributes, float]:
        return dict(self._values)

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, dict(k)) for k, v in self._values.items()]


async def sample_forever(
    name: str, sample: Callable[[], Awaitable[None]], interval_s: float
) -> None:
    """Call ``sample`` every ``interval_s`` until cancelled. A failed sample (the registry or
    NATS away) keeps the previous values and is retried at the next tick: a gauge must never
    take its service down."""
    failing = False
    this = asyncio.current_task()
    while True:
        try:
            await sample()
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:  # once per outage, not once per tick
                log.warning("gauges.sample_failed", gauges=name, error=repr(exc))
            failing = True
        # Python 3.11's asyncio.wait_for (inside nats-py's requests) swallows a cancellation
        # that arrives as its reply does; the request stays cancelling, so honour it here or
        # the service's stop waits on this loop forever.
        if this is not None and this.cancelling():
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s)
