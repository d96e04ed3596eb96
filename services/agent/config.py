"""Agent settings: which chip this node emulates, how many devices, where the registry is."""

from __future__ import annotations

import dataclasses

from pocgrid.limits import MAX_DEVICES_PER_NODE
from services.core.config import ConfigError, EnvConfig, env_name, parse_hostport


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig(EnvConfig):
    chip: str = ""
    """Catalogue chip slug this node emulates, e.g. ascend-910b2."""

    devices: int = 8
    """Number of devices on the node."""

    node_id: str = ""
    """Stable node id; defaults to '<chip>-<hostname>'."""

    registry_addr: str = ""
    """HOST:PORT of the registry's NodeLeaseService."""

    advertise_addr: str = ""
    """HOST:PORT others use to reach this agent; defaults to the bound listen address."""

    speed_factor: float = 0.0
    """Pace work in real time at this many virtual seconds per second; 0 = as fast as possible."""

    agent_database_url: str = ""
    """Where the agent keeps its outbox of usage events; empty = a SQLite file named after the
    node in the data directory. One database per agent (agents do not share an outbox)."""

    def __post_init__(self) -> None:
        if self.speed_factor < 0:
            raise ConfigError(f"{env_name('speed_factor')}: must be >= 0")
        if not self.chip:
            raise ConfigError(f"{env_name('chip')} (or --chip) must be set")
        if not 1 <= self.devices <= MAX_DEVICES_PER_NODE:
            raise ConfigError(f"{env_name('devices')}: must be 1..{MAX_DEVICES_PER_NODE}")
        if not self.registry_addr:
            raise ConfigError(f"{env_name('registry_addr')} must be set")
        parse_hostport("registry_addr", self.registry_addr)
        if self.advertise_addr:
            parse_hostport("advertise_addr", self.advertise_addr)
