"""What a job asks for, what it is given, and why it waits: the scheduler's data, no behaviour.

Units, once: compute share is in thousandths of one device (``share_milli``, 1..1000, the
trace's ``gpu_milli`` and HAMi's ``gpucores`` percent times ten); memory is GiB; times are
seconds on the caller's clock (the live scheduler's wall clock or the simulator's); work is in
*reference device-seconds*: the seconds one device of speed 1.0 needs at the demand's share.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

WHOLE: Final = 1000
"""``share_milli`` of a whole device."""

JobKind = Literal["evaluation", "serving", "batch"]
JOB_KINDS: Final[tuple[JobKind, ...]] = ("evaluation", "serving", "batch")

DeviceKey = tuple[str, int]
"""(node, device index): a device's identity in the pool."""


class DemandError(ValueError):
    """A demand that can never be valid; the message names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"{field_name}: {rule}")
        self.field = field_name
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Demand:
    """One job's request. Every demand is all-or-nothing (gang): its ``devices`` start together
    or not at all; a gang of N workers is one demand of N devices.

    A fractional demand (``share_milli`` < 1000) is one device's slice: ``devices`` must be 1.
    All devices of one placement are of one chip type (a gang across chip types would run at
    its slowest member's pace, so no policy here builds one).
    """

    job_id: str
    tenant: str
    kind: JobKind = "batch"
    priority: int = 0
    """Higher runs first; may preempt lower-priority preemptible work."""
    devices: int = 1
    share_milli: int = WHOLE
    """Compute share of each device, thousandths (1..1000)."""
    memory_gib: float = 0.0
    """Device memory per device, GiB; 0 = no claim beyond the share (a whole device holds all
    of its memory whatever this says)."""
    chips: frozenset[str] = frozenset()
    """Allowed chip types (catalogue slugs); empty = any."""
    single_node: bool = False
    """All devices on one node (a pod; tensor parallelism over the chip interconnect)."""
    deferrable: bool = False
    """May be shifted in time (peak shaving), as long as ``deadline`` holds."""
    deadline: float | None = None
    """Latest completion time; None = none."""
    preemptible: bool = False
    """May be stopped, checkpoint-style, for higher-priority work or a quota reclaim."""
    work: float = 0.0
    """Reference device-seconds still to do; 0 = runs until stopped (serving)."""
    speed: Mapping[str, float] = field(default_factory=dict)
    """Chip type -> speed relative to the reference (work done per second per device); a chip
    type absent here runs at 1.0. The job x chip matrix of heterogeneity-aware policies."""
    submitted_at: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "speed", MappingProxyType(dict(self.speed)))
        object.__setattr__(self, "chips", frozenset(self.chips))
        if not self.job_id:
            raise DemandError("job_id", "must not be empty")
        if not self.tenant:
            raise DemandError("tenant", "must not be empty")
        if self.kind not in JOB_KINDS:
            raise DemandError("kind", f"must be one of {', '.join(JOB_KINDS)}")
        if self.devices < 1:
            raise DemandError("devices", "must be >= 1")
        if not 1 <= self.share_milli <= WHOLE:
            raise DemandError("share_milli", f"must be in 1..{WHOLE}")
        if self.share_milli < WHOLE and self.devices != 1:
            raise DemandError("devices", "must be 1 for a fraction of a device")
        if not self.memory_gib >= 0:
            raise DemandError("memory_gib", "must be >= 0")
        if not self.work >= 0:
            raise DemandError("work", "must be >= 0")
        for chip, s in self.speed.items():
            if not s > 0:
                raise DemandError(f"speed[{chip}]", "must be > 0")
        if self.deferrable and self.deadline is None:
            raise DemandError("deadline", "must be set for deferrable work")

    def allows(self, chip: str) -> bool:
        return not self.chips or chip in self.chips

    def speed_on(self, chip: str) -> float:
        return self.speed.get(chip, 1.0)

    @property
    def size_milli(self) -> int:
        """Device-thousandths held while running: what quotas and fair share count."""
        return self.devices * self.share_milli


@dataclass(frozen=True, slots=True)
class Slot:
    """One device's part of a placement."""

    node: str
    index: int
    share_milli: int
    memory_gib: float

    @property
    def key(self) -> DeviceKey:
        return (self.node, self.index)


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    chip: str
    slots: tuple[Slot, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.node for s in self.slots))


class PreemptionCause(enum.StrEnum):
    PRIORITY = "priority"
    """Higher-priority work needed the devices."""
    RECLAIM = "reclaim"
    """A tenant took its guaranteed quota back from a borrower."""


@dataclass(frozen=True, slots=True)
class Preemption:
    job_id: str
    for_job: str
    cause: PreemptionCause


class PendingCode(enum.StrEnum):
    """Why a job waits, as Kueue says it: data a CLI can print and a test can check."""

    NO_CAPACITY = "no_capacity"
    """Not enough free room on any allowed chip type now."""
    GANG = "gang"
    """Enough devices free in total, but not together as the gang needs them."""
    QUOTA = "quota"
    """The tenant is at its quota and cannot borrow more now."""
    NEVER_FITS = "never_fits"
    """The pool can never hold it (too many devices, an unknown chip): an error, not a wait."""
    DEFERRED = "deferred"
    """Deferrable work held back to a cheaper hour or under the load cap."""
    BEHIND = "behind"
    """Strict order: a job ahead of it waits."""


@dataclass(frozen=True, slots=True)
class PendingReason:
    code: PendingCode
    message: str
    retry_at: float | None = None
    """When the reason may no longer hold though nothing else changed (a held job's latest
    start, the next hour's cap): the caller should run a round by then. None: only when the
    pool or the queue changes."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What one scheduling round did. The placements and preemptions are already applied to
    the pool it was given; the caller persists them, or releases them from the pool."""

    placements: tuple[Placement, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    pending: Mapping[str, PendingReason] = field(default_factory=dict)
