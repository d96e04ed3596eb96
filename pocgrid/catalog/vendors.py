"""Vendor families and their runtime profiles, from ``data/vendors/<family>.json``.

A profile holds the facts that make one vendor's runtime different from another's: who the
vendor is (as the source tables spell it, and whether it is domestic), its runtime's names,
device naming, error codes and texts, allocation rules, precision rules, collective library,
and per-chip facts the chip table does not carry (compute units, precision overrides). The
agent's emulated runtime (``services.agent.runtime``) is one class driven by this data, so
adding a vendor is a data change here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from pocgrid.catalog._json import JsonObject
from pocgrid.catalog.errors import CatalogDataError
from pocgrid.catalog.records import PRECISIONS, VENDOR_FAMILIES, Chip, Precision, VendorFamily
from pocgrid.catalog.sourcing import Sourced

VENDORS_DIR: Final = "vendors"

_MIB = 1024 * 1024
# Linux numbers DRM render nodes from minor 128 (/dev/dri/renderD128 is the first GPU).
_DRM_RENDER_BASE = 128


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """The vendor's runtime/SDK and how it spells its version."""

    name: str
    """Software stack name as the vendor writes it (CANN, Neuware, DTK, ...)."""
    api: str
    """The host runtime API the emulation mirrors (AscendCL, CNRT, HIP, ...)."""
    version_example: str
    """A version string as the vendor's tools print it, seen in public material."""
    version_format: str
    """Template for ``version_string``: ``{name}`` and ``{version}`` are filled in."""
    provenance: Sourced[str]
    """Sources for the names and version style (value = version_example)."""

    @property
    def version_string(self) -> str:
        return self.version_format.format(name=self.name, version=self.version_example)


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One vendor error: enum symbol, numeric code, and the text the stack prints."""

    symbol: str
    code: int
    message: str
    """Template; may use {requested} {free} {total} {device} {allocated} (pretty sizes)."""
    verified: bool
    """True when symbol and code were read from a public header or doc; see ``note``."""
    sources: tuple[str, ...]
    note: str


@dataclass(frozen=True, slots=True)
class OutOfMemorySpec:
    """The runtime-level OOM error plus the framework-level text on top of it."""

    error: ErrorSpec
    framework_message: Sourced[str]
    """What the vendor's torch/paddle plugin raises (``NPU out of memory. Tried to ...``)."""


@dataclass(frozen=True, slots=True)
class ErrorTable:
    out_of_memory: OutOfMemorySpec
    invalid_argument: ErrorSpec
    invalid_handle: ErrorSpec
    device_unavailable: ErrorSpec


@dataclass(frozen=True, slots=True)
class MemoryRules:
    """How the vendor's allocator sizes, aligns and reserves device memory."""

    malloc_api: str
    free_api: str
    alignment_bytes: Sourced[int]
    """Address alignment of returned pointers."""
    size_multiple_bytes: Sourced[int]
    """Requested sizes are rounded up to a multiple of this."""
    size_extra_bytes: Sourced[int]
    """Bytes added after rounding (Ascend adds 32 to every aclrtMalloc)."""
    hidden_mib: Sourced[int]
    """Physical memory never reported to applications (firmware, ECC, driver carve-outs)."""
    context_overhead_mib: Sourced[int]
    """Memory the runtime context and its libraries take before the first user malloc."""

    def charged_bytes(self, nbytes: int) -> int:
        """Bytes an allocation of ``nbytes`` really consumes under this vendor's rules."""
        multiple = self.size_multiple_bytes.value
        rounded = -(-nbytes // multiple) * multiple
        return rounded + self.size_extra_bytes.value

    @property
    def reserved_bytes(self) -> int:
        return (self.hidden_mib.value + self.context_overhead_mib.value) * _MIB


@dataclass(frozen=True, slots=True)
class PrecisionRules:
    """Which number formats the family's stack runs, before per-chip facts are applied."""

    default: frozenset[Precision]
    """Formats the family's software stack supports on its current parts."""
    excluded: frozenset[Precision]
    """Formats the family documents as unsupported, even if a catalogue peak exists."""
    provenance: Sourced[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ChipFacts:
    """Facts about one chip (catalogue slug) that the chip table does not carry."""

    compute_units: Sourced[int] | None
    precisions: Sourced[tuple[str, ...]] | None
    """When present, replaces the family rule for this chip (e.g. Ascend 310P: fp16/int8)."""
    memory_gib: Sourced[float] | None
    """Device memory (GiB) to emulate only when the chip table has none (what the SMI tool
    reports)."""


@dataclass(frozen=True, slots=True)
class VendorProfile:
    """Everything that differs between vendor runtimes, for one family."""

    family: VendorFamily
    vendor: str
    """The vendor as a chip record names it (``Chip.vendor``: "Huawei Ascend")."""
    source_vendor: str
    """The vendor as the shared chips.csv spells it ("Huawei (HiSilicon)")."""
    domestic: bool
    """A Chinese vendor: the chips the platform exists to evaluate."""
    runtime: RuntimeInfo
    smi_tool: Sourced[str]
    torch_device_type: Sourced[str]
    """The torch device type (``npu``, ``mlu``, ``cuda``, ...) the vendor's plugin registers."""
    device_node: Sourced[str]
    """Device file pattern with ``{index}`` (``/dev/davinci{index}``) or ``{render}``, the
    DRM render-node minor (128 + index) that ROCm-style drivers use."""
    collective_library: Sourced[str]
    compute_unit_kind: Sourced[str]
    uuid_format: Sourced[str]
    """How the SMI tool prints a device UUID; ``{uuid}`` is the canonical UUID text."""
    memory: MemoryRules
    errors: ErrorTable
    precisions: PrecisionRules
    chips: Mapping[str, ChipFacts]

    def torch_device(self, index: int) -> str:
        return f"{self.torch_device_type.value}:{index}"

    def device_path(self, index: int) -> str:
        return self.device_node.value.format(index=index, render=_DRM_RENDER_BASE + index)

    def chip_facts(self, slug: str) -> ChipFacts | None:
        return self.chips.get(slug)

    def chip_precisions(self, chip: Chip) -> tuple[Precision, ...]:
        """The formats ``chip`` runs: a per-chip fact if this profile has one, else the family's
        formats plus any format the chip table gives a peak for, minus documented exclusions."""
        facts = self.chip_facts(chip.name)
        chosen: set[str]
        if facts is not None and facts.precisions is not None:
            chosen = set(facts.precisions.value)
        else:
            chosen = set(self.precisions.default) | set(chip.peak_tflops)
            chosen -= self.precisions.excluded
        return tuple(p for p in PRECISIONS if p in chosen)

    def device_memory_gib(self, chip: Chip) -> float | None:
        """Device memory to emulate: the chip table's figure, else this profile's per-chip
        SMI figure; None when neither source has one."""
        if chip.memory_gib is not None:
            return chip.memory_gib
        facts = self.chip_facts(chip.name)
        return None if facts is None or facts.memory_gib is None else facts.memory_gib.value


def _error(entry: JsonObject) -> ErrorSpec:
    verified, sources, note = entry.provenance()
    return ErrorSpec(
        symbol=entry.string("symbol"),
        code=entry.integer("code"),
        message=entry.string("message"),
        verified=verified,
        sources=sources,
        note=note,
    )


def _precisions(values: tuple[str, ...], where: str) -> frozenset[Precision]:
    unknown = [v for v in values if v not in PRECISIONS]
    if unknown:
        raise CatalogDataError(f"{where}: unknown precision(s) {unknown}; known: {PRECISIONS}")
    return frozenset(p for p in PRECISIONS if p in values)


def _family(value: str, where: str) -> VendorFamily:
    for family in VENDOR_FAMILIES:
        if value == family:
            return family
    raise CatalogDataError(f"{where}.family: '{value}' is not one of {VENDOR_FAMILIES}")


def _chip(entry: JsonObject) -> ChipFacts:
    precisions = entry.sourced_str_list("precisions") if entry.has("precisions") else None
    if precisions is not None:
        _precisions(precisions.value, f"{entry.where}.precisions")
    return ChipFacts(
        compute_units=entry.sourced_int("compute_units") if entry.has("compute_units") else None,
        precisions=precisions,
        memory_gib=entry.sourced_float("memory_gib") if entry.has("memory_gib") else None,
    )


def parse_profile(data: object, where: str) -> VendorProfile:
    """Build a profile from parsed JSON; ``where`` names the source in error messages."""
    root = JsonObject(data, where)
    runtime = root.obj("runtime")
    memory = root.obj("memory")
    errors = root.obj("errors")
    oom = errors.obj("out_of_memory")
    precisions = root.obj("precisions")
    rules = precisions.sourced_str_list("default")
    excluded = precisions.str_list("excluded")
    chips = root.obj("chips")

    profile = VendorProfile(
        family=_family(root.string("family"), where),
        vendor=root.string("vendor"),
        source_vendor=root.string("source_vendor"),
        domestic=root.boolean("domestic"),
        runtime=RuntimeInfo(
            name=runtime.string("name"),
            api=runtime.string("api"),
            version_example=runtime.sourced_str("version_example").value,
            version_format=runtime.string("version_format"),
            provenance=runtime.sourced_str("version_example"),
        ),
        smi_tool=root.sourced_str("smi_tool"),
        torch_device_type=root.sourced_str("torch_device_type"),
        device_node=root.sourced_str("device_node"),
        collective_library=root.sourced_str("collective_library"),
        compute_unit_kind=root.sourced_str("compute_unit_kind"),
        uuid_format=root.sourced_str("uuid_format"),
        memory=MemoryRules(
            malloc_api=memory.string("malloc_api"),
            free_api=memory.string("free_api"),
            alignment_bytes=memory.sourced_int("alignment_bytes"),
            size_multiple_bytes=memory.sourced_int("size_multiple_bytes"),
            size_extra_bytes=memory.sourced_int("size_extra_bytes"),
            hidden_mib=memory.sourced_int("hidden_mib"),
            context_overhead_mib=memory.sourced_int("context_overhead_mib"),
        ),
        errors=ErrorTable(
            out_of_memory=OutOfMemorySpec(
                error=_error(oom), framework_message=oom.sourced_str("framework_message")
            ),
            invalid_argument=_error(errors.obj("invalid_argument")),
            invalid_handle=_error(errors.obj("invalid_handle")),
            device_unavailable=_error(errors.obj("device_unavailable")),
        ),
        precisions=PrecisionRules(
            default=_precisions(rules.value, f"{precisions.where}.default"),
            excluded=_precisions(excluded, f"{precisions.where}.excluded"),
            provenance=rules,
        ),
        chips=MappingProxyType({slug: _chip(chips.obj(slug)) for slug in chips.names()}),
    )
    _check(profile, where)
    return profile


def _check(profile: VendorProfile, where: str) -> None:
    """Reject values the runtime cannot work with, naming the field."""
    node = profile.device_node.value
    if "{index}" not in node and "{render}" not in node:
        raise CatalogDataError(f"{where}.device_node: the pattern needs {{index}} or {{render}}")
    if "{uuid}" not in profile.uuid_format.value:
        raise CatalogDataError(f"{where}.uuid_format: the pattern needs a {{uuid}} field")
    rules = profile.memory
    for name, value in (
        ("alignment_bytes", rules.alignment_bytes.value),
        ("size_multiple_bytes", rules.size_multiple_bytes.value),
    ):
        if value <= 0 or value & (value - 1):
            raise CatalogDataError(f"{where}.memory.{name}: must be a positive power of two")
    for name, value in (
        ("size_extra_bytes", rules.size_extra_bytes.value),
        ("hidden_mib", rules.hidden_mib.value),
        ("context_overhead_mib", rules.context_overhead_mib.value),
    ):
        if value < 0:
            raise CatalogDataError(f"{where}.memory.{name}: must not be negative")
    overlap = profile.precisions.default & profile.precisions.excluded
    if overlap:
        raise CatalogDataError(f"{where}.precisions: {sorted(overlap)} both default and excluded")


def parse_profile_text(text: str, family: VendorFamily, where: str) -> VendorProfile:
    """Parse one family file; the file must describe the family it is named for."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogDataError(f"{where}: not valid JSON ({exc})") from exc
    profile = parse_profile(data, where)
    if profile.family != family:
        raise CatalogDataError(f"{where}.family: says '{profile.family}', file is for '{family}'")
    return profile


def load_profiles(
    read_text: Callable[[str], str], where_prefix: str = ""
) -> Mapping[VendorFamily, VendorProfile]:
    """Every family's profile; ``read_text`` reads a path relative to the data folder."""
    profiles: dict[VendorFamily, VendorProfile] = {}
    for family in VENDOR_FAMILIES:
        name = f"{VENDORS_DIR}/{family}.json"
        try:
            text = read_text(name)
        except FileNotFoundError:
            raise CatalogDataError(
                f"{where_prefix}{name}: no profile for family '{family}'"
            ) from None
        profiles[family] = parse_profile_text(text, family, where_prefix + name)
    return MappingProxyType(profiles)


def extra_profile_files(data_dir: Path) -> list[str]:
    """Family files in ``data_dir`` for no known family (a typo would be silently ignored)."""
    known = {f"{family}.json" for family in VENDOR_FAMILIES}
    folder = data_dir / VENDORS_DIR
    return sorted(p.name for p in folder.glob("*.json") if p.name not in known)
