"""Trace replay on a simulated clock, through the same ``Policy`` the live scheduler runs.

Events are arrivals, completions and, while deferred work waits, the top of each hour (when a
tariff period or the cap may change). At each event time the simulator releases what finished,
queues what arrived and calls ``policy.schedule(queue, pool, now)`` once. A placement runs its
remaining work at the job's speed on the chip it got (``Demand.speed``); a preempted job keeps
the work it did (checkpoint-style: done = seconds run x speed) and queues again for the rest.

Figures (``Result``): JCT = completion - arrival; wait = first start - arrival; utilization =
busy device-seconds (a fraction counts its share) over healthy capacity x makespan; the load
curve is busy devices per hour; peak-to-average is its maximum over its mean, over the hours
from the first arrival to the last completion; cost = busy device-hours x the chip type's price
x the tariff multiplier of the hour.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np

from pocgrid.sched.model import WHOLE, Demand, PendingCode
from pocgrid.sched.policy import Policy
from pocgrid.sched.pool import Pool
from pocgrid.tariff import FLAT_RATE, TimeOfUse

EPOCH: Final = datetime(2023, 1, 2, tzinfo=UTC)
"""Trace second 0 (a Monday, midnight UTC): the traces give seconds from their start only."""

HOUR: Final = 3600.0

_ARRIVE, _FINISH, _WAKE = 0, 1, 2
# finishes before arrivals at the same instant: freed devices are seen by the arriving work
_ORDER = {_FINISH: 0, _ARRIVE: 1, _WAKE: 2}

RESULT_KEYS: Final = (
    "jobs",
    "completed",
    "avg_jct_s",
    "p99_jct_s",
    "avg_wait_s",
    "utilization",
    "makespan_s",
    "peak_to_average",
    "deadline_misses",
    "cost",
)


@dataclass(slots=True)
class JobRecord:
    demand: Demand
    """The demand as last queued: ``work`` is what remained then."""
    arrived: float
    work_total: float
    started: float | None = None
    finished: float | None = None
    work_done: float = 0.0
    preemptions: int = 0
    chips: list[str] = field(default_factory=list)
    """Chip type of each run, in order."""


@dataclass(frozen=True, slots=True)
class _Run:
    chip: str
    start: float
    speed: float
    size_milli: int
    token: int


@dataclass(frozen=True, slots=True)
class Result:
    policy: str
    jobs: int
    completed: int
    avg_jct_s: float
    p99_jct_s: float
    avg_wait_s: float
    utilization: float
    makespan_s: float
    peak_to_average: float
    deadline_misses: int
    cost: float
    never_fit: int
    preemptions: int
    hourly_load: tuple[float, ...]
    """Busy devices, mean over each hour from t=0."""
    records: Mapping[str, JobRecord]

    def summary(self) -> dict[str, float | int]:
        """The ``--json`` keys, exactly."""
        return {k: getattr(self, k) for k in RESULT_KEYS}


class Simulator:
    def __init__(
        self,
        pool: Pool,
        policy: Policy,
        demands: Sequence[Demand],
        *,
        prices: Mapping[str, float] | None = None,
        tariff: TimeOfUse = FLAT_RATE,
        epoch: datetime = EPOCH,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """``prices``: per device-hour by chip type (a chip without one costs nothing, and the
        result says nothing about it). ``progress(done, total)`` is called as jobs finish."""
        self.pool = pool
        self.policy = policy
        self.prices = dict(prices or {})
        self.tariff = tariff
        self.epoch = epoch
        self._progress = progress
        self.records = {d.job_id: JobRecord(d, d.submitted_at, d.work) for d in demands}
        if len(self.records) != len(demands):
            raise ValueError("job ids must be unique")
        for d in demands:
            if d.work <= 0:
                raise ValueError(f"job {d.job_id}: the simulator needs work > 0")
        self._events: list[tuple[float, int, int, int, str, int]] = []
        self._seq = 0
        for d in demands:
            self._push(d.submitted_at, _ARRIVE, d.job_id)
        self._queue: dict[str, Demand] = {}
        self._running: dict[str, _Run] = {}
        self._token = 0
        self._wake_at = math.inf
        self._segments: list[tuple[float, float, str, int]] = []
        self._preemptions = 0
        self._never_fit = 0

    def _push(self, t: float, kind: int, job_id: str = "", token: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, _ORDER[kind], self._seq, kind, job_id, token))

    def run(self) -> Result:
        done = 0
        total = len(self.records)
        now = 0.0
        while self._events:
            now = self._events[0][0]
            while self._events and self._events[0][0] == now:
                _, _, _, kind, job_id, token = heapq.heappop(self._events)
                if kind == _ARRIVE:
                    self._queue[job_id] = self.records[job_id].demand
                elif kind == _FINISH:
                    run = self._running.get(job_id)
                    if run is None or run.token != token:
                        continue  # preempted since: a stale completion
                    self._stop(job_id, now)
                    rec = self.records[job_id]
                    rec.finished = now
                    done += 1
                    if self._progress is not None:
                        self._progress(done, total)
                elif kind == _WAKE and now >= self._wake_at:
                    self._wake_at = math.inf
            if self._queue:
                self._round(now)
        return self._result()

    def _stop(self, job_id: str, now: float) -> None:
        run = self._running.pop(job_id)
        rec = self.records[job_id]
        rec.work_done = min(rec.work_total, rec.work_done + (now - run.start) * run.speed)
        if now > run.start:
            self._segments.append((run.start, now, run.chip, run.size_milli))
        if job_id in self.pool.running:
            self.pool.release(job_id)

    def _round(self, now: float) -> None:
        decision = self.policy.schedule(list(self._queue.values()), self.pool, now)
        for pre in decision.preemptions:
            # the policy released the devices already; the job keeps the work it did
            self._stop(pre.job_id, now)
            rec = self.records[pre.job_id]
            rec.preemptions += 1
            self._preemptions += 1
            remaining = max(rec.work_total - rec.work_done, 1e-6)
            rec.demand = dataclasses.replace(rec.demand, work=remaining)
            self._queue[pre.job_id] = rec.demand
        for p in decision.placements:
            rec = self.records[p.job_id]
            d = self._queue.pop(p.job_id)
            speed = d.speed_on(p.chip)
            self._token += 1
            self._running[p.job_id] = _Run(p.chip, now, speed, d.size_milli, self._token)
            if rec.started is None:
                rec.started = now
            rec.chips.append(p.chip)
            self._push(now + d.work / speed, _FINISH, p.job_id, self._token)
        wake = math.inf
        for job_id, reason in decision.pending.items():
            if reason.code is PendingCode.NEVER_FITS:
                # it would wait forever: the live scheduler refuses it at submit
                self._queue.pop(job_id, None)
                self._never_fit += 1
            elif reason.retry_at is not None:
                wake = min(wake, reason.retry_at)
            elif reason.code is PendingCode.DEFERRED:
                wake = min(wake, (math.floor(now / HOUR) + 1) * HOUR)
        if wake < math.inf:
            wake = max(wake, now + 1e-6)
            if wake < self._wake_at:
                self._wake_at = wake
                self._push(wake, _WAKE)

    # -- figures ----------------------------------------------------------------------------

    def _result(self) -> Result:
        recs = self.records.values()
        finished = [r for r in recs if r.finished is not None]
        jct = np.array([r.finished - r.arrived for r in finished if r.finished is not None])
        waits = np.array([r.started - r.arrived for r in recs if r.started is not None])
        first = min((r.arrived for r in recs), default=0.0)
        last = max((r.finished for r in finished if r.finished is not None), default=first)
        makespan = last - first
        hours = max(1, math.ceil(last / HOUR))
        load, per_chip_busy = _hourly_busy(self._segments, hours)
        busy_s = float(load.sum())
        capacity = self.pool.capacity_milli / WHOLE
        window = load[int(first // HOUR) : hours] / HOUR
        mean = float(window.mean()) if window.size else 0.0
        multipliers = np.array(
            [
                float(self.tariff.multiplier(self.tariff.period(self.epoch + timedelta(hours=h))))
                for h in range(hours)
            ]
        )
        cost = sum(
            self.prices.get(chip, 0.0) / HOUR * float((busy[:hours] * multipliers).sum())
            for chip, busy in per_chip_busy.items()
        )
        misses = sum(
            1
            for r in recs
            if r.demand.deadline is not None
            and (r.finished is None or r.finished > r.demand.deadline + 1e-6)
        )
        return Result(
            policy=self.policy.name,
            jobs=len(self.records),
            completed=len(finished),
            avg_jct_s=float(jct.mean()) if jct.size else 0.0,
            p99_jct_s=float(np.percentile(jct, 99)) if jct.size else 0.0,
            avg_wait_s=float(waits.mean()) if waits.size else 0.0,
            utilization=busy_s / (capacity * makespan) if capacity and makespan else 0.0,
            makespan_s=makespan,
            peak_to_average=float(window.max()) / mean if mean else 0.0,
            deadline_misses=misses,
            cost=round(cost, 2),
            never_fit=self._never_fit,
            preemptions=self._preemptions,
            hourly_load=tuple(float(x) for x in load[:hours] / HOUR),
            records=self.records,
        )


def _hourly_busy(
    segments: Sequence[tuple[float, float, str, int]], hours: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Busy device-seconds per hour, in all and per chip type, exact over hour edges: partial
    first and last hours directly, the whole hours between through a difference array."""
    per_chip: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start, end, chip, size in segments:
        arrays = per_chip.get(chip)
        if arrays is None:
            arrays = per_chip[chip] = (np.zeros(hours + 2), np.zeros(hours + 2))
        direct, rate = arrays
        w = size / WHOLE
        h0, h1 = int(start // HOUR), int(end // HOUR)
        if h0 == h1:
            direct[h0] += w * (end - start)
            continue
        direct[h0] += w * ((h0 + 1) * HOUR - start)
        direct[h1] += w * (end - h1 * HOUR)
        rate[h0 + 1] += w
        rate[h1] -= w
    busy = {c: (d + np.cumsum(r) * HOUR)[: hours + 1] for c, (d, r) in per_chip.items()}
    total = np.zeros(hours + 1)
    for b in busy.values():
        total += b
    return total, busy
