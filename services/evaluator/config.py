"""Evaluator settings."""

from __future__ import annotations

import dataclasses

from services.core.config import ConfigError, EnvConfig, env_name, parse_hostport


@dataclasses.dataclass(frozen=True, slots=True)
class EvaluatorConfig(EnvConfig):
    evaluator_scenarios_file: str = ""
    """JSON scenario catalogue to serve; empty means the packaged data/scenarios.json."""

    evaluator_database_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in POCGRID_DATA_DIR."""

    registry_addr: str = ""
    """HOST:PORT of the registry, where the pool's agents are found; empty: evaluations fail
    with FAILED_PRECONDITION until it is set (the scenario catalogue is still served)."""

    scheduler_addr: str = ""
    """HOST:PORT of the scheduler, which places every run (a JOB_KIND_EVALUATION job per chip
    type) on the pool; empty: runs go straight to the registry's first node of each chip type,
    with no reservation (an evaluator without a scheduler)."""

    metering_addr: str = ""
    """HOST:PORT of metering, whose price book prices the results; empty: results say they
    were not priced."""

    adapter_addr: str = ""
    """HOST:PORT of the adapter, where tenants' imported ONNX models are read for user
    scenarios over them; empty: such scenarios are refused with FAILED_PRECONDITION."""

    evaluator_serve_timeout_s: float = 120.0
    """Deadline of one agent ServeRequests call (one run of up to 100,000 requests)."""

    evaluator_placement_timeout_s: float = 600.0
    """How long a run waits for the scheduler to place it (it queues while the pool is busy)
    before it is cancelled and reported as not placed."""

    evaluator_parallel_runs: int = 6
    """Runs (scenario x chip) served at once, each on its own agent."""

    evaluator_comm_host: str = ""
    """Host the bootstrap root of a hybrid-training communicator listens on (this process
    hosts it; every agent taking part connects to it); empty: the host of this evaluator's
    own address, a wildcard bind replaced by this host's address."""

    def __post_init__(self) -> None:
        for name in ("registry_addr", "scheduler_addr", "metering_addr", "adapter_addr"):
            value = getattr(self, name)
            if value:
                parse_hostport(name, value)
        if not self.evaluator_placement_timeout_s > 0:
            raise ConfigError(f"{env_name('evaluator_placement_timeout_s')}: must be > 0")
        if not self.evaluator_serve_timeout_s > 0:
            raise ConfigError(f"{env_name('evaluator_serve_timeout_s')}: must be > 0")
        if not 1 <= self.evaluator_parallel_runs <= 64:
            raise ConfigError(f"{env_name('evaluator_parallel_runs')}: must be 1..64")
