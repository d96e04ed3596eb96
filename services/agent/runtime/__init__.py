"""Emulated vendor runtimes: one ``VendorRuntime`` class, one data profile per vendor family.

``create_runtime(chip, device_count)`` builds the runtime of a catalogue chip's vendor: its
device model, memory accounting with the vendor's allocation rules and error codes, its
precisions and native operators, fault injection, and virtual-time streams.
"""

from services.agent.runtime.devices import DeviceHealth, DeviceInfo
from services.agent.runtime.errors import (
    DeviceOutOfMemory,
    DeviceUnavailable,
    InvalidArgument,
    InvalidHandle,
    ProfileDataError,
    VendorRuntimeError,
)
from services.agent.runtime.memory import Allocation, MemoryInfo
from services.agent.runtime.operators import OperatorCatalog, OperatorGap, load_operators
from services.agent.runtime.profiles import (
    FAMILIES,
    PRECISIONS,
    VendorProfile,
    all_profiles,
    load_profile,
)
from services.agent.runtime.runtime import (
    OperatorSupport,
    RuntimeConfigError,
    VendorRuntime,
    chip_precisions,
    create_runtime,
)
from services.agent.runtime.sourcing import Sourced
from services.agent.runtime.streams import VirtualClock, VirtualStream, WorkItem

__all__ = [
    "FAMILIES",
    "PRECISIONS",
    "Allocation",
    "DeviceHealth",
    "DeviceInfo",
    "DeviceOutOfMemory",
    "DeviceUnavailable",
    "InvalidArgument",
    "InvalidHandle",
    "MemoryInfo",
    "OperatorCatalog",
    "OperatorGap",
    "OperatorSupport",
    "ProfileDataError",
    "RuntimeConfigError",
    "Sourced",
    "VendorProfile",
    "VendorRuntime",
    "VendorRuntimeError",
    "VirtualClock",
    "VirtualStream",
    "WorkItem",
    "all_profiles",
    "chip_precisions",
    "create_runtime",
    "load_operators",
    "load_profile",
]
