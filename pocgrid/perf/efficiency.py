"""Efficiency factors: what share of a chip's spec peaks a real workload reaches.

All numbers come from one data file, ``data/efficiency.json``: global parameters (some fitted
on the TensorRT-LLM reference rows, see docs/perf_model.md) and per-chip factors seeded from
FlagPerf measurements. Every resolved ceiling says whether it is ``measured`` (a measurement
on this chip), ``spec-derived`` (a spec peak times a share that was measured elsewhere or is a
fleet default) or ``estimated`` (the spec number or the share is itself a guess).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from typing import Final, Literal, TypeAlias, cast

from pocgrid.catalog import Chip
from pocgrid.perf.errors import UnknownNameInput, UnsupportedInput

Status: TypeAlias = Literal["measured", "spec-derived", "estimated"]
STATUSES: Final[tuple[Status, ...]] = ("measured", "spec-derived", "estimated")

DATA_FILE: Final = "efficiency.json"
SCHEMA_VERSION: Final = 2

TERA: Final = 1e12
GIGA: Final = 1e9
GIB_BYTES: Final = float(2**30)
"""Memory capacities are GiB (the catalogue's ``memory_gib``: marketed sizes are binary, an
"80GB" A100 reports 81920 MiB); bandwidths and FLOP rates stay decimal as their specs are."""

LOW_PRECISIONS: Final = frozenset({"fp8", "int8"})
SIXTEEN_BIT: Final = ("fp16", "bf16")


@dataclass(frozen=True, slots=True)
class PerfParams:
    """Global parameters of the model (values from ``global`` in efficiency.json)."""

    layer_overhead_s: float
    """Fixed seconds per decoder layer per forward step (launches, framework)."""
    collective_latency_s: float
    """Fixed seconds per tensor-parallel all-reduce, added to its bandwidth term."""
    low_precision_compute_factor: float
    """Multiplies the 16-bit GEMM share for fp8/int8 when that precision is not measured."""
    default_memory_efficiency: float
    """Share of spec memory bandwidth for chips without a bandwidth measurement."""
    default_compute_efficiency: float
    """Share of 16-bit spec peak for chips without a GEMM measurement."""
    default_link_efficiency: float
    """Share of per-direction link bandwidth a ring all-reduce reaches."""
    fallback_link_bw_gbs: float
    """Bidirectional link bandwidth assumed when the catalogue has none (PCIe 4.0 x16)."""
    runtime_reserve_gib: float
    """Memory per device the runtime keeps for itself, GiB."""
    elementwise_hidden_passes: float
    """Hidden-width activation reads+writes per token per layer outside GEMMs and attention."""
    overlap_exponent: float
    """k of the p-norm that combines an operator's compute, memory and link times (1: no
    overlap, the sum; infinity: perfect overlap, the plain roofline max)."""
    gqa_kv_reread: float
    """Share of the extra query heads of a grouped-query attention group that read their KV
    head from memory again in decode: 0 when the kernel loads each KV head once per group,
    1 when it loads it once per query head."""
    moe_gemm_efficiency: float
    """Share of the dense GEMM rate that routed-expert GEMMs reach (token permutation,
    grouped GEMMs of uneven size, routing)."""
    request_overhead_s: float
    """Seconds between a request leaving the client and reaching the engine's queue (HTTP or
    gRPC front end, tokenisation): part of every TTFT and latency, none of TPOT."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_values(self, **values: float) -> PerfParams:
        """A copy with some parameters replaced (calibration and tests)."""
        unknown = set(values) - set(self.names())
        if unknown:
            raise ValueError(f"unknown parameters: {sorted(unknown)}")
        return replace(self, **values)


@dataclass(frozen=True, slots=True)
class Ceiling:
    """One achieved rate (FLOP/s or bytes/s) with where it comes from."""

    rate: float
    """Achieved rate in FLOP/s (ops/s for int8) or bytes/s."""
    spec: float | None
    """The spec rate it derives from, None when the catalogue has none."""
    status: Status
    reason: str

    @property
    def efficiency(self) -> float | None:
        """Share of the spec rate, None without a spec."""
        return None if self.spec is None else self.rate / self.spec


@dataclass(frozen=True, slots=True)
class ChipCeilings:
    """Everything the roofline needs about one chip at one precision."""

    chip: str
    precision: str
    gemm: Ceiling
    """Matrix multiplies with weights at ``precision``."""
    attention: Ceiling
    """Attention math, which stays at 16 bits (or fp32/tf32) whatever the weight precision."""
    memory: Ceiling
    link: Ceiling
    """Per direction (half the catalogue's bidirectional figure)."""


Batching: TypeAlias = Literal["static", "in-flight"]
ServingValue: TypeAlias = float | bool | None


@dataclass(frozen=True, slots=True)
class StackProfile:
    """The software a prediction assumes: (chip families, serving stack, version).

    Software moves as fast as silicon, so the global parameters that describe software rather
    than the chip (fixed costs, kernel quality, scheduler settings) belong to a profile, and
    every prediction names the profile it used.
    """

    name: str
    families: tuple[str, ...]
    """Vendor families the profile describes; ``*`` for any."""
    stack: str
    version: str
    batching: Batching
    basis: str
    """How its numbers were obtained: calibrated on which rows, or assumed from which profile
    and why."""
    params: PerfParams
    provenance: Mapping[str, tuple[str, str]]
    """Parameter -> (status, reason), for the parameters the profile sets itself."""
    serving: Mapping[str, ServingValue]
    """Engine settings (ServingConfig field -> value) the stack runs with by default."""
    inherits: str | None = None

    def covers(self, family: str) -> bool:
        return "*" in self.families or family in self.families

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "families": list(self.families),
            "stack": self.stack,
            "version": self.version,
            "batching": self.batching,
            "basis": self.basis,
            "inherits": self.inherits,
        }


STATIC_PROFILE: Final = "trtllm-0.6-static"
"""The profile fitted on TensorRT-LLM 0.5/0.6 static-batch tables: the default for static
batches, and the one every figure before profiles existed used."""
CURRENT_PROFILE: Final = "trtllm-0.17-ifb"
"""The current in-flight-batching profile, the default for serving modes on any chip whose
family has no profile of its own."""


@dataclass(frozen=True, slots=True)
class _Entry:
    share: float | None
    absolute: float | None
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class _ChipFactors:
    compute: Mapping[str, _Entry]
    memory: _Entry | None
    link: _Entry | None


class EfficiencyData:
    """The parsed data file: global parameters and per-chip factor entries."""

    def __init__(
        self,
        params: PerfParams,
        provenance: Mapping[str, tuple[str, str]],
        chips: Mapping[str, _ChipFactors],
        measurements: tuple[Mapping[str, object], ...],
        profiles: Mapping[str, StackProfile] | None = None,
    ) -> None:
        self.params = params
        self.profiles: dict[str, StackProfile] = dict(profiles or {})
        """Software-stack profiles by name (their params already resolved)."""
        self.provenance = dict(provenance)
        """Parameter name -> (status, reason)."""
        self._chips = dict(chips)
        self.measurements = measurements
        """The raw measurement records, for cross-checks and docs."""

    @classmethod
    def from_json(cls, text: str) -> EfficiencyData:
        doc = _obj(json.loads(text), "document")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{DATA_FILE}: schema_version must be {SCHEMA_VERSION}")
        glob = _obj(doc.get("global"), "global")
        values: dict[str, float] = {}
        provenance: dict[str, tuple[str, str]] = {}
        for name in PerfParams.names():
            entry = _obj(glob.get(name), f"global.{name}")
            values[name] = _num(entry.get("value"), f"global.{name}.value")
            provenance[name] = (
                _text(entry.get("status"), f"global.{name}.status"),
                _text(entry.get("reason"), f"global.{name}.reason"),
            )
        chips: dict[str, _ChipFactors] = {}
        for slug, raw in _obj(doc.get("chips"), "chips").items():
            body = _obj(raw, f"chips.{slug}")
            compute = {
                prec: _entry(e, f"chips.{slug}.compute.{prec}", "tflops")
                for prec, e in _obj(body.get("compute", {}), f"chips.{slug}.compute").items()
            }
            memory = body.get("memory")
            link = body.get("link")
            chips[slug] = _ChipFactors(
                compute=compute,
                memory=None if memory is None else _entry(memory, f"chips.{slug}.memory", "gbs"),
                link=None if link is None else _entry(link, f"chips.{slug}.link", "gbs"),
            )
        raw_measurements = doc.get("measurements", [])
        if not isinstance(raw_measurements, list):
            raise ValueError(f"{DATA_FILE}: measurements must be a list")
        measurements = tuple(_obj(m, "measurements[]") for m in raw_measurements)
        params = PerfParams(**values)
        profiles = _profiles(_obj(doc.get("profiles"), "profiles"), params, provenance)
        return cls(params, provenance, chips, measurements, profiles)

    def with_params(self, params: PerfParams) -> EfficiencyData:
        """The same per-chip factors and measurements under other global parameters."""
        return EfficiencyData(
            params, self.provenance, self._chips, self.measurements, self.profiles
        )

    def with_profile(self, profile: StackProfile) -> EfficiencyData:
        """A copy with ``profile`` added or replaced (calibration and tests)."""
        profiles = {**self.profiles, profile.name: profile}
        return EfficiencyData(
            self.params, self.provenance, self._chips, self.measurements, profiles
        )

    def profile(self, name: str) -> StackProfile:
        try:
            return self.profiles[name]
        except KeyError:
            raise UnknownNameInput(
                "profile", f"no profile {name!r} (known: {', '.join(sorted(self.profiles))})"
            ) from None

    def default_profile(self, family: str, batching: Batching) -> StackProfile:
        """The profile a prediction uses when none is named: static batches use the static
        profile; serving modes use the family's own in-flight profile, else the current one."""
        if batching == "static":
            return self.profile(STATIC_PROFILE)
        for profile in self.profiles.values():
            if profile.batching == "in-flight" and family in profile.families:
                return profile
        return self.profile(CURRENT_PROFILE)

    def listed_chips(self) -> tuple[str, ...]:
        """Chips with at least one non-default factor."""
        return tuple(self._chips)

    def listed_precisions(self, chip: str) -> tuple[str, ...]:
        """Precisions with a per-chip compute entry (measured or transferred) for ``chip``."""
        factors = self._chips.get(chip)
        return () if factors is None else tuple(factors.compute)

    # -- resolution ------------------------------------------------------------------------

    def ceilings(
        self, chip: Chip, precision: str, params: PerfParams | None = None
    ) -> ChipCeilings:
        """Resolve the achieved ceilings of ``chip`` at ``precision``.

        Raises UnsupportedInput when the catalogue lacks a number the model cannot do without
        (no peak at that precision, no memory bandwidth and no measurement of it).
        """
        p = self.params if params is None else params
        return ChipCeilings(
            chip=chip.name,
            precision=precision,
            gemm=self.compute_ceiling(chip, precision, p),
            attention=self.compute_ceiling(chip, attention_precision(chip, precision), p),
            memory=self.memory_ceiling(chip, p),
            link=self.link_ceiling(chip, p),
        )

    def compute_ceiling(self, chip: Chip, precision: str, params: PerfParams) -> Ceiling:
        factors = self._chips.get(chip.name)
        entry = factors.compute.get(precision) if factors else None
        peak = chip.peak(precision)
        spec = None if peak is None else peak * TERA
        if entry is not None:
            if entry.absolute is not None:
                return Ceiling(entry.absolute * TERA, spec, entry.status, entry.reason)
            if spec is not None and entry.share is not None:
                if chip.provenance.get(f"peak_tflops.{precision}") == "estimated":
                    # A measured share of a peak that is itself an estimate is an estimate.
                    reason = f"{entry.reason}; the {precision} peak itself is an estimate"
                    return Ceiling(spec * entry.share, spec, "estimated", reason)
                return Ceiling(spec * entry.share, spec, entry.status, entry.reason)
        if spec is None:
            have = ", ".join(sorted(chip.peak_tflops)) or "none"
            raise UnsupportedInput(
                "precision",
                f"{chip.name} has no published {precision} peak (catalogue has: {have})",
            )
        share, basis, status = self._sixteen_bit_share(chip, params)
        reason = basis
        if precision in LOW_PRECISIONS:
            share *= params.low_precision_compute_factor
            reason += (
                f" x low-precision factor {params.low_precision_compute_factor:g} "
                f"({precision} not measured on this chip)"
            )
        if chip.provenance.get(f"peak_tflops.{precision}") == "estimated":
            status = "estimated"
            reason += f"; the {precision} peak itself is an estimate in the catalogue"
        return Ceiling(spec * share, spec, status, reason)

    def _sixteen_bit_share(self, chip: Chip, params: PerfParams) -> tuple[float, str, Status]:
        """The chip's 16-bit GEMM share: measured (transferred) or the fleet default."""
        factors = self._chips.get(chip.name)
        if factors is not None:
            for prec in SIXTEEN_BIT:
                entry = factors.compute.get(prec)
                if entry is None:
                    continue
                share = entry.share
                if share is None and entry.absolute is not None:
                    peak = chip.peak(prec)
                    share = None if peak is None else min(1.0, entry.absolute / peak)
                if share is not None:
                    return (
                        share,
                        f"{prec} share {share:.3f} of this chip ({entry.status})",
                        ("spec-derived" if entry.status != "estimated" else "estimated"),
                    )
        default = params.default_compute_efficiency
        return default, f"fleet default share {default:g} (no GEMM measurement)", "spec-derived"

    def memory_ceiling(self, chip: Chip, params: PerfParams) -> Ceiling:
        factors = self._chips.get(chip.name)
        entry = factors.memory if factors else None
        spec = None if chip.memory_bw_gbs is None else chip.memory_bw_gbs * GIGA
        if entry is not None:
            if entry.absolute is not None:
                return Ceiling(entry.absolute * GIGA, spec, entry.status, entry.reason)
            if spec is not None and entry.share is not None:
                return Ceiling(spec * entry.share, spec, entry.status, entry.reason)
        if spec is None:
            raise UnsupportedInput(
                "chip", f"{chip.name} has no memory bandwidth in the catalogue and no measurement"
            )
        share = params.default_memory_efficiency
        status: Status = "spec-derived"
        reason = f"spec bandwidth x fleet default share {share:g} (no bandwidth measurement)"
        if chip.provenance.get("memory_bw_gbs") == "estimated":
            status = "estimated"
            reason += "; the bandwidth itself is an estimate in the catalogue"
        return Ceiling(spec * share, spec, status, reason)

    def link_ceiling(self, chip: Chip, params: PerfParams) -> Ceiling:
        factors = self._chips.get(chip.name)
        entry = factors.link if factors else None
        status: Status
        if chip.interconnect_bw_gbs is not None:
            bidirectional = chip.interconnect_bw_gbs
            status = (
                "estimated"
                if chip.provenance.get("interconnect_bw_gbs") == "estimated"
                else "spec-derived"
            )
            basis = f"half of the stated {bidirectional:g} GB/s (bidirectional)"
        else:
            bidirectional = params.fallback_link_bw_gbs
            status = "estimated"
            basis = f"no interconnect figure; assumed PCIe 4.0 x16 ({bidirectional:g} GB/s)"
        spec = bidirectional / 2 * GIGA
        if entry is not None and entry.absolute is not None:
            return Ceiling(entry.absolute * GIGA, spec, entry.status, entry.reason)
        share = entry.share if entry is not None and entry.share is not None else None
        if share is not None and entry is not None:
            return Ceiling(spec * share, spec, entry.status, entry.reason)
        eff = params.default_link_efficiency
        return Ceiling(spec * eff, spec, status, f"{basis} x default share {eff:g}")


def attention_precision(chip: Chip, precision: str) -> str:
    """Precision attention runs at: fp32/tf32 as asked, otherwise a 16-bit format.

    fp8/int8 deployments quantise weights (and the KV cache) but compute softmax attention
    in 16 bits, as the TensorRT-LLM 0.6 FP8 reference rows did.
    """
    if precision in ("fp32", "tf32"):
        return precision
    if precision in SIXTEEN_BIT and chip.peak(precision) is not None:
        return precision
    for prec in SIXTEEN_BIT:
        if chip.peak(prec) is not None:
            return prec
    raise UnsupportedInput("precision", f"{chip.name} has no 16-bit peak for attention")


@functools.lru_cache(maxsize=1)
def default_efficiency() -> EfficiencyData:
    """The packaged efficiency data, read once per process."""
    text = (
        resources.files("pocgrid.perf")
        .joinpath("data")
        .joinpath(DATA_FILE)
        .read_text(encoding="utf-8")
    )
    return EfficiencyData.from_json(text)


def default_params() -> PerfParams:
    return default_efficiency().params


# --- JSON readers ------------------------------------------------------------------------


def _obj(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{DATA_FILE}: {what} must be an object")
    return cast("Mapping[str, object]", value)


def _num(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{DATA_FILE}: {what} must be a number")
    return float(value)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{DATA_FILE}: {what} must be a non-empty string")
    return value


def _entry(raw: object, what: str, absolute_key: str) -> _Entry:
    body = _obj(raw, what)
    status = _text(body.get("status"), f"{what}.status")
    if status not in STATUSES:
        raise ValueError(f"{DATA_FILE}: {what}.status must be one of {STATUSES}")
    share = body.get("share")
    absolute = body.get(absolute_key)
    if (share is None) == (absolute is None):
        raise ValueError(f"{DATA_FILE}: {what} needs exactly one of share, {absolute_key}")
    return _Entry(
        share=None if share is None else _num(share, f"{what}.share"),
        absolute=None if absolute is None else _num(absolute, f"{what}.{absolute_key}"),
        status=status,
        reason=_text(body.get("reason"), f"{what}.reason"),
    )


def _profiles(
    raw: Mapping[str, object], base: PerfParams, base_provenance: Mapping[str, tuple[str, str]]
) -> dict[str, StackProfile]:
    """Profiles in file order; each starts from the global parameters, or from the profile it
    ``inherits`` (which must come earlier), and overrides some of them."""
    out: dict[str, StackProfile] = {}
    for name, body_raw in raw.items():
        what = f"profiles.{name}"
        body = _obj(body_raw, what)
        parent_name = body.get("inherits")
        params, provenance, serving = base, dict(base_provenance), {}
        if parent_name is not None:
            parent = out.get(_text(parent_name, f"{what}.inherits"))
            if parent is None:
                raise ValueError(f"{DATA_FILE}: {what}.inherits must name an earlier profile")
            params, provenance, serving = (
                parent.params,
                dict(parent.provenance),
                dict(parent.serving),
            )
        overrides: dict[str, float] = {}
        for key, entry_raw in _obj(body.get("params", {}), f"{what}.params").items():
            if key not in PerfParams.names():
                raise ValueError(f"{DATA_FILE}: {what}.params.{key} is not a parameter")
            entry = _obj(entry_raw, f"{what}.params.{key}")
            overrides[key] = _num(entry.get("value"), f"{what}.params.{key}.value")
            provenance[key] = (
                _text(entry.get("status"), f"{what}.params.{key}.status"),
                _text(entry.get("reason"), f"{what}.params.{key}.reason"),
            )
        for key, value in _obj(body.get("serving", {}), f"{what}.serving").items():
            if value is not None and not isinstance(value, int | float | bool):
                raise ValueError(f"{DATA_FILE}: {what}.serving.{key} must be a number or bool")
            serving[key] = value
        families = body.get("families")
        if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
            raise ValueError(f"{DATA_FILE}: {what}.families must be a list of strings")
        batching = _text(body.get("batching"), f"{what}.batching")
        if batching not in ("static", "in-flight"):
            raise ValueError(f"{DATA_FILE}: {what}.batching must be static or in-flight")
        out[name] = StackProfile(
            name=name,
            families=tuple(families),
            stack=_text(body.get("stack"), f"{what}.stack"),
            version=_text(body.get("version"), f"{what}.version"),
            batching=cast("Batching", batching),
            basis=_text(body.get("basis"), f"{what}.basis"),
            params=params.with_values(**overrides),
            provenance=provenance,
            serving=serving,
            inherits=None if parent_name is None else str(parent_name),
        )
    for required in (STATIC_PROFILE, CURRENT_PROFILE):
        if required not in out:
            raise ValueError(f"{DATA_FILE}: profiles must include {required}")
    return out
