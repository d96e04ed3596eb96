"""Peak shaving and valley filling: deferrable work moved in time, under a load cap.

Like a grid operator shifting flexible load (and carbon-aware schedulers shifting flexible
jobs in time: Radovanović et al., "Carbon-Aware Computing for Datacenters", IEEE Trans. Power
Systems 2022; Wiesner et al., "Let's Wait Awhile", Middleware '21), ``Shaped`` wraps any policy:

- work that is not deferrable goes to the inner policy as it comes (it cannot be shaved);
- deferrable work starts only while the busy devices (all work, a fraction counting its share)
  stay under the cap of the tariff period in force (``LoadCap``), earliest deadline first: a
  cap of 0 in the peak keeps new deferrable work out of it (peak shaving), a high cap in the
  valley lets the held work in (valley filling); ``start_in`` can further restrict the periods
  it may start in (every period by default, so the caps alone decide);
- except work that would miss its deadline by waiting longer: it starts now, whatever the hour
  or the cap (a deadline is never traded for a flatter curve). How long it needs is judged on
  the chip type the inner policy would try first for it, plus a margin (25 %), so it is held
  as long as the chip it would get allows. Judged at the slowest chip type
  (``judge="slowest"``) a start by then is in time on any chip, but most long work is then
  never held at all (on
  bench/sched_diurnal.py under fifo: 17 % lower peak-to-average instead of 36 %).
- the cap is checked over the hours a job would run (at its fastest chip type, up to 48 h),
  against what already runs until its expected end, so work started under the cap in the
  valley does not carry the load over the cap of the peak that follows.
- a cap in watts (``LoadCap.watts``) is checked the same way, each busy device counting its chip
  type's power (``power``: the catalogue's TDP) times its share; a job not placed yet counts at
  the most power-hungry chip type it may get, so the cap holds wherever it lands. A chip type
  without a figure counts at the highest one known (a cap is never exceeded for want of one).

A held job's pending reason is ``DEFERRED`` and says until when. The wrapper is a ``Policy``:
the live scheduler and the simulator run it like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from pocgrid.sched.model import WHOLE, Decision, Demand, PendingCode, PendingReason
from pocgrid.sched.policy import Policy, QueuePolicy
from pocgrid.sched.pool import Allocation, Pool
from pocgrid.tariff import NO_CAP, LoadCap, Period, TimeOfUse

_HOUR = 3600.0
HORIZON_H = 48
"""How far ahead the cap is checked for a job that would start now."""


class Shaped:
    def __init__(
        self,
        inner: Policy,
        tariff: TimeOfUse,
        cap: LoadCap = NO_CAP,
        *,
        epoch: datetime,
        start_in: Collection[Period] = tuple(Period),
        judge: Literal["policy", "fastest", "slowest"] = "policy",
        margin: float = 0.25,
        power: Mapping[str, float] | None = None,
    ) -> None:
        """``epoch``: the wall-clock time of the scheduler's second 0 (aware). ``judge`` and
        ``margin``: how long a held job is taken to need, to know when it must start: its run
        time on the chip type the inner policy tries first for it (``policy``: the fastest for
        hetero, the first in pool order for fifo), on its fastest or on its slowest allowed
        chip type, plus ``margin`` of it. ``power``: watts of one busy device by chip type,
        which a cap in watts needs."""
        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.power = dict(power or {})
        if cap.watts and not self.power:
            raise ValueError("a cap in watts needs the power of each chip type (power=)")
        for chip, watts in self.power.items():
            if not watts > 0:
                raise ValueError(f"power of {chip} must be > 0, got {watts}")
        self._max_power = max(self.power.values(), default=0.0)
        if epoch.tzinfo is None:
            raise ValueError("epoch must be an aware datetime")
        self.inner = inner
        self.tariff = tariff
        self.cap = cap
        self.epoch = epoch
        self.start_in = frozenset(start_in)
        self.judge = judge
        self.margin = margin
        self._caps_memo: dict[int, list[float]] = {}
        self._watt_caps_memo: dict[int, list[float]] = {}
        self._timing_memo: dict[tuple[str, float], tuple[float, int]] = {}

    @property
    def name(self) -> str:
        return f"{self.inner.name}+shaping"

    def _when(self, now: float) -> datetime:
        return self.epoch + timedelta(seconds=now)

    def next_start(self, now: float) -> float:
        """The next instant (now or later) in a ``start_in`` period: a top of the hour."""
        if len(self.start_in) == len(Period):
            return now
        if self.tariff.period(self._when(now)) in self.start_in:
            return now
        top = (now // _HOUR + 1) * _HOUR
        for h in range(48):
            t = top + h * _HOUR
            if self.tariff.period(self._when(t)) in self.start_in:
                return t
        return float("inf")

    def _timing(self, d: Demand, pool: Pool) -> tuple[float, int]:
        """(latest start, hours it would run at its fastest allowed chip type), kept per job
        and work left: a held job is looked at every round."""
        key = (d.job_id, d.work)
        got = self._timing_memo.get(key)
        if got is None:
            got = self._timing_memo[key] = (self._latest_start(d, pool), self._run_hours(d, pool))
        return got

    def _latest_start(self, d: Demand, pool: Pool) -> float:
        assert d.deadline is not None  # deferrable demands carry one
        if self.judge == "policy" and isinstance(self.inner, QueuePolicy):
            order = self.inner.chip_order(d, pool, 0.0)
            pace = d.speed_on(order[0]) if order else 1.0
        else:
            speeds = [d.speed_on(c) for c in pool.chips if d.allows(c)]
            pace = (min(speeds) if self.judge == "slowest" else max(speeds)) if speeds else 1.0
        run = d.work / pace
        return d.deadline - run * (1.0 + self.margin)

    def _caps(self, now: float) -> list[float]:
        """The cap (device thousandths) of each of the next ``HORIZON_H`` hours; inf uncapped.
        A tariff repeats daily, so the answer is kept per minute of the day."""
        return self._hourly(now, self._caps_memo, self.cap.at, WHOLE)

    def _watt_caps(self, now: float) -> list[float]:
        """The power cap (W x 1000, as device thousandths x watts) of each of the next hours."""
        return self._hourly(now, self._watt_caps_memo, self.cap.watts_at, WHOLE)

    def _hourly(
        self,
        now: float,
        memo: dict[int, list[float]],
        at: Callable[[TimeOfUse, datetime], float | None],
        scale: float,
    ) -> list[float]:
        key = int(now % 86_400) // 60
        got = memo.get(key)
        if got is not None:
            return got
        out: list[float] = []
        for h in range(HORIZON_H):
            cap = at(self.tariff, self._when(now + h * _HOUR))
            out.append(math.inf if cap is None else cap * scale)
        memo[key] = out
        return out

    def _power_of(self, chip: str) -> float:
        return self.power.get(chip, self._max_power)

    def _demand_watts(self, d: Demand, pool: Pool) -> float:
        """Device thousandths x watts a held job would add: at its most power-hungry chip."""
        chips = [c for c in pool.chips if d.allows(c)]
        return d.size_milli * max((self._power_of(c) for c in chips), default=self._max_power)

    def _allocation_watts(self, a: Allocation) -> float:
        return a.demand.size_milli * self._power_of(a.placement.chip)

    @staticmethod
    def _projection(
        pool: Pool, now: float, weight: Callable[[Allocation], float] | None = None
    ) -> list[float]:
        """Busy device thousandths (or, with ``weight``, that of each allocation) in each of the
        next ``HORIZON_H`` hours from what runs now, each job until its expected end (work left
        at its start over its speed there; work that runs until stopped, to the horizon)."""
        ends: list[float] = []
        sizes: list[float] = []
        for a in pool.running.values():
            d = a.demand
            ends.append(
                a.started_at + d.work / d.speed_on(a.placement.chip) if d.work > 0 else math.inf
            )
            sizes.append(d.size_milli if weight is None else weight(a))
        if not ends:
            return [0.0] * HORIZON_H
        order = np.argsort(ends)
        sorted_ends = np.asarray(ends)[order]
        # held by jobs ending after each hour's start: a suffix sum over the sorted ends
        suffix = np.cumsum(np.asarray(sizes, dtype=np.float64)[order][::-1])[::-1]
        starts = now + _HOUR * np.arange(HORIZON_H)
        first = np.searchsorted(sorted_ends, starts, side="right")
        held = np.where(first < len(ends), suffix[np.minimum(first, len(ends) - 1)], 0.0)
        return [float(x) for x in held]

    @staticmethod
    def _run_hours(d: Demand, pool: Pool) -> int:
        """Hours (started, up to the horizon) the demand would run, at its fastest allowed
        chip type: the cap is checked over all of them, not only the hour it starts in."""
        speeds = [d.speed_on(c) for c in pool.chips if d.allows(c)]
        seconds = d.work / max(speeds) if speeds and d.work > 0 else HORIZON_H * _HOUR
        return max(1, min(HORIZON_H, math.ceil(seconds / _HOUR)))

    def schedule(self, queue: Sequence[Demand], pool: Pool, now: float) -> Decision:
        firm: list[Demand] = []
        flexible: list[tuple[float, Demand]] = []
        opens = self.next_start(now)
        for d in queue:
            if not d.deferrable:
                firm.append(d)
                continue
            latest, _ = self._timing(d, pool)
            if latest <= now or (opens > now and opens > latest):
                firm.append(d)  # waiting for the next cheap hour would miss the deadline
            else:
                flexible.append((latest, d))
        first = self.inner.schedule(firm, pool, now)
        pending: dict[str, PendingReason] = dict(first.pending)
        admitted: list[Demand] = []
        if opens > now:
            until = self._when(opens).isoformat(timespec="minutes")
            for latest, d in flexible:
                pending[d.job_id] = PendingReason(
                    PendingCode.DEFERRED,
                    f"deferrable: held for a cheaper hour (from {until})",
                    min(opens, latest),
                )
        else:
            caps = self._caps(now)
            busy = self._projection(pool, now)
            watt_caps = self._watt_caps(now) if self.cap.watts else None
            watts = self._projection(pool, now, self._allocation_watts) if watt_caps else None
            next_hour = (now // _HOUR + 1) * _HOUR
            reasons: dict[tuple[str, int], str] = {}
            for latest, d in sorted(flexible, key=lambda ld: (ld[0], ld[1].job_id)):
                _, hours = self._timing(d, pool)
                over = next((h for h in range(hours) if busy[h] + d.size_milli > caps[h]), None)
                what = "devices"
                dw = 0.0
                if over is None and watt_caps is not None and watts is not None:
                    dw = self._demand_watts(d, pool)
                    over = next((h for h in range(hours) if watts[h] + dw > watt_caps[h]), None)
                    what = "watts"
                if over is not None:
                    message = reasons.get((what, over))
                    if message is None:
                        at = self._when(now + over * _HOUR).isoformat(timespec="minutes")
                        limit = (caps if what == "devices" else watt_caps or caps)[over] / WHOLE
                        unit = "busy devices" if what == "devices" else "W of busy devices"
                        message = reasons[(what, over)] = (
                            f"deferrable: it would run past the load cap of {limit:g} {unit} "
                            f"at {at}"
                        )
                    pending[d.job_id] = PendingReason(
                        PendingCode.DEFERRED, message, min(next_hour, latest)
                    )
                    continue
                admitted.append(d)
                for h in range(hours):
                    busy[h] += d.size_milli
                    if watts is not None:
                        watts[h] += dw
        if not admitted:
            return Decision(first.placements, first.preemptions, pending)
        second = self.inner.schedule(admitted, pool, now)
        pending.update(second.pending)
        return Decision(
            first.placements + second.placements, first.preemptions + second.preemptions, pending
        )
