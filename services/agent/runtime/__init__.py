"""Emulated vendor runtimes: one ``VendorRuntime`` class, driven by the catalogue's vendor data.

``create_runtime(chip, device_count)`` builds the runtime of a catalogue chip's vendor: its
device model, memory accounting with the vendor's allocation rules and error codes, its
precisions and native operators, fault injection, and virtual-time streams. The facts (the
vendor profile, operator coverage) live in ``pocgrid.catalog``; this package is the behaviour.
"""

from services.agent.runtime.devices import DeviceHealth, DeviceInfo
from services.agent.runtime.errors import (
    DeviceOutOfMemory,
    DeviceUnavailable,
    InvalidArgument,
    InvalidHandle,
    VendorRuntimeError,
)
from services.agent.runtime.memory import Allocation, MemoryInfo
from services.agent.runtime.runtime import (
    OperatorSupport,
    RuntimeConfigError,
    VendorRuntime,
    create_runtime,
)
from services.agent.runtime.streams import VirtualClock, VirtualStream, WorkItem

__all__ = [
    "Allocation",
    "DeviceHealth",
    "DeviceInfo",
    "DeviceOutOfMemory",
    "DeviceUnavailable",
    "InvalidArgument",
    "InvalidHandle",
    "MemoryInfo",
    "OperatorSupport",
    "RuntimeConfigError",
    "VendorRuntime",
    "VendorRuntimeError",
    "VirtualClock",
    "VirtualStream",
    "WorkItem",
    "create_runtime",
]
