"""Scheduler settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pocgrid.sched import POLICY_NAMES, Quota, QuotaBook
from pocgrid.tariff import TariffFile, parse_tariff
from services.core.config import ConfigError, EnvConfig, env_name, parse_hostport


def _quota(name: str, text: str) -> Quota:
    """``G`` or ``G:B``: G devices guaranteed, borrowing at most B more (none: no limit)."""
    guaranteed, _, borrow = text.partition(":")
    try:
        g = float(guaranteed)
        b = float(borrow) if borrow else None
        return Quota(
            guaranteed_milli=round(g * 1000),
            borrow_limit_milli=None if b is None else round(b * 1000),
        )
    except ValueError as exc:
        raise ConfigError(
            f"{env_name(name)}: '{text}' is not GUARANTEED[:BORROW_LIMIT] in devices ({exc})"
        ) from None


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig(EnvConfig):
    scheduler_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    registry_addr: str = ""
    """HOST:PORT of the registry (the live pool). Empty: no pool, jobs are accepted and wait
    (a scheduler on its own, as in API tests)."""

    scheduler_policy: str = "fifo"
    """Placement policy of pocgrid.sched (see docs/scheduling.md)."""

    scheduler_quotas: str = ""
    """Tenant quotas, 'TENANT=G[:B],...': G devices guaranteed, B more it may borrow from idle
    quota (no B: no limit). Empty (and no default quota): no quotas."""

    scheduler_default_quota: str = ""
    """Quota of a tenant scheduler_quotas does not name, 'G[:B]'; empty: 0 guaranteed, no
    borrowing limit."""

    scheduler_tariff_file: str = ""
    """Tariff JSON (``pocgrid.tariff.parse_tariff``: peak/flat/valley hours, multipliers and an
    optional load cap per period): deferrable jobs are held for hours under the cap (peak
    shaving, valley filling; docs/scheduling.md). Empty: no shaping, the policy alone."""

    placement_interval_ms: int = 500
    """How often the placement loop runs when nothing wakes it (submit, cancel, node lost)."""

    def __post_init__(self) -> None:
        if self.registry_addr:
            parse_hostport("registry_addr", self.registry_addr)
        if self.scheduler_policy not in POLICY_NAMES:
            raise ConfigError(
                f"{env_name('scheduler_policy')}: unknown policy '{self.scheduler_policy}' "
                f"(known: {', '.join(POLICY_NAMES)})"
            )
        if self.placement_interval_ms <= 0:
            raise ConfigError(f"{env_name('placement_interval_ms')}: must be > 0")
        self.quota_book()
        self.tariff()

    def tariff(self) -> TariffFile | None:
        if not self.scheduler_tariff_file:
            return None
        name = env_name("scheduler_tariff_file")
        try:
            text = Path(self.scheduler_tariff_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{name}: {self.scheduler_tariff_file}: {exc.strerror}") from None
        try:
            return parse_tariff(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def quota_book(self) -> QuotaBook | None:
        if not self.scheduler_quotas and not self.scheduler_default_quota:
            return None
        tenants: dict[str, Quota] = {}
        for item in filter(None, (p.strip() for p in self.scheduler_quotas.split(","))):
            tenant, sep, text = item.partition("=")
            if not sep or not tenant:
                raise ConfigError(f"{env_name('scheduler_quotas')}: '{item}' is not TENANT=G[:B]")
            tenants[tenant] = _quota("scheduler_quotas", text)
        default = (
            _quota("scheduler_default_quota", self.scheduler_default_quota)
            if self.scheduler_default_quota
            else Quota()
        )
        return QuotaBook(tenants, default)
