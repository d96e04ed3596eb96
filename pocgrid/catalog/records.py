"""Typed records of the chip and model catalogue, and their JSON form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, TypeAlias, TypeVar, cast, get_args

from pocgrid.catalog.errors import CatalogDataError

# Each closed set of names is written once, as a Literal; the tuple is read off it, so the two
# cannot drift. Every other module (agent runtime, perf model, adapter, CLI) imports these.
VendorFamily: TypeAlias = Literal[
    "ascend",
    "cambricon",
    "hygon",
    "kunlunxin",
    "moorethreads",
    "iluvatar",
    "metax",
    "biren",
    "enflame",
    "nvidia",
    "amd",
]
"""Vendor families, one per vendor software stack; each has ``data/vendors/<family>.json``."""
VENDOR_FAMILIES: Final = cast("tuple[VendorFamily, ...]", get_args(VendorFamily))

# int8 is TOPS, the others TFLOPS; one mapping keeps "what can this chip do at
# precision p" a single lookup for the performance model.
Precision: TypeAlias = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]
"""Number formats, in the order reports list them (the proto's ``Precision`` enum names)."""
PRECISIONS: Final = cast("tuple[Precision, ...]", get_args(Precision))

PRECISION_BYTES: Final[Mapping[str, int]] = MappingProxyType(
    {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1}
)
"""Bytes one stored element (weight, KV-cache entry) takes. tf32 is a compute mode: its tensors
are kept in fp32."""
if tuple(PRECISION_BYTES) != PRECISIONS:  # pragma: no cover - a definition error
    raise CatalogDataError("PRECISION_BYTES must list every precision, in PRECISIONS order")

Provenance: TypeAlias = Literal["spec", "estimated", "measured"]
PROVENANCES: Final = cast("tuple[Provenance, ...]", get_args(Provenance))
Confidence: TypeAlias = Literal["high", "medium", "low"]
CONFIDENCES: Final = cast("tuple[Confidence, ...]", get_args(Confidence))

ModelKind: TypeAlias = Literal["llm", "vision", "speech", "nlp", "diffusion", "onnx"]
"""``onnx``: a tenant's imported graph, described as a model record for planning; never in the
catalogue."""
MODEL_KINDS: Final = cast("tuple[ModelKind, ...]", get_args(ModelKind))

# Scalar numeric chip fields; peak figures are keyed "peak_tflops.<precision>".
CHIP_SCALAR_FIELDS: Final[tuple[str, ...]] = (
    "memory_gib",
    "memory_bw_gbs",
    "interconnect_bw_gbs",
    "tdp_w",
)

JsonDict: TypeAlias = dict[str, object]

_Choice = TypeVar("_Choice", bound=str)


@dataclass(frozen=True, slots=True, kw_only=True)
class Chip:
    """One accelerator type as the public record describes it; unknown numbers are None."""

    name: str
    """Stable lowercase slug, e.g. ``ascend-910b2``."""
    display_name: str
    """The product name as the source table writes it."""
    vendor: str
    vendor_family: VendorFamily
    domestic: bool
    memory_gib: float | None
    """Device memory in GiB (2**30 bytes). The sources' ``memory_gb`` is the marketed size,
    and marketed HBM/GDDR sizes are binary: an "80GB" A100 reports 81920 MiB."""
    memory_bw_gbs: float | None
    """Theoretical peak memory bandwidth, GB/s."""
    interconnect_bw_gbs: float | None
    """Chip-to-chip bandwidth as the vendor states it (see ``notes`` for direction)."""
    tdp_w: float | None
    peak_tflops: Mapping[str, float]
    """Dense peak per precision; only known precisions are present (int8 in TOPS)."""
    memory_type: str | None
    interconnect: str | None
    software_stack: str | None
    collective_library: str | None
    scope: str
    """What one record covers: chip, card (possibly several chips), module or package."""
    confidence: str
    notes: str
    sources: tuple[str, ...]
    provenance: Mapping[str, Provenance]
    """Field name (``peak_tflops.fp16`` style for peaks) -> where the number comes from."""
    figure_confidence: Mapping[str, Confidence] = field(default_factory=dict)
    """Field name -> how far the number can be trusted: ``high`` (vendor datasheet or a
    measurement), ``medium`` (consistent secondary sources), ``low`` (one secondary source, or
    derived)."""
    estimation_methods: Mapping[str, str] = field(default_factory=dict)
    """Field name -> how an ``estimated`` number was derived, for the ones that say so."""

    def __post_init__(self) -> None:
        # Read-only views keep a shared, cached catalogue from being mutated by a caller.
        object.__setattr__(self, "peak_tflops", MappingProxyType(dict(self.peak_tflops)))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))
        object.__setattr__(
            self, "figure_confidence", MappingProxyType(dict(self.figure_confidence))
        )
        object.__setattr__(
            self, "estimation_methods", MappingProxyType(dict(self.estimation_methods))
        )
        for key in self.peak_tflops:
            if key not in PRECISIONS:
                raise CatalogDataError(f"chip {self.name!r}: unknown precision {key!r}")

    # The mapping fields are unhashable; the slug identifies a chip.
    def __hash__(self) -> int:
        return hash(("chip", self.name))

    @property
    def emulatable(self) -> bool:
        """Memory size, bandwidth and a 16-bit peak are known, so the performance model can run."""
        return (
            self.memory_gib is not None
            and self.memory_bw_gbs is not None
            and ("fp16" in self.peak_tflops or "bf16" in self.peak_tflops)
        )

    def peak(self, precision: str) -> float | None:
        """Dense peak at ``precision`` (TFLOPS; TOPS for int8), None when no source gives it.

        No fallback between fp16 and bf16: a chip's bf16 rate is not implied by its fp16 rate.
        """
        key = precision.lower()
        if key not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        return self.peak_tflops.get(key)

    def to_dict(self) -> JsonDict:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "vendor": self.vendor,
            "vendor_family": self.vendor_family,
            "domestic": self.domestic,
            "emulatable": self.emulatable,
            "memory_gib": self.memory_gib,
            "memory_bw_gbs": self.memory_bw_gbs,
            "interconnect_bw_gbs": self.interconnect_bw_gbs,
            "tdp_w": self.tdp_w,
            "peak_tflops": dict(self.peak_tflops),
            "memory_type": self.memory_type,
            "interconnect": self.interconnect,
            "software_stack": self.software_stack,
            "collective_library": self.collective_library,
            "scope": self.scope,
            "confidence": self.confidence,
            "notes": self.notes,
            "sources": list(self.sources),
            "provenance": dict(self.provenance),
            "figure_confidence": dict(self.figure_confidence),
            "estimation_methods": dict(self.estimation_methods),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Chip:
        name = _str(data, "name")
        try:
            chip = cls(
                name=name,
                display_name=_str(data, "display_name"),
                vendor=_str(data, "vendor"),
                vendor_family=_choice(data, "vendor_family", VENDOR_FAMILIES),
                domestic=_bool(data, "domestic"),
                memory_gib=_opt_float(data, "memory_gib"),
                memory_bw_gbs=_opt_float(data, "memory_bw_gbs"),
                interconnect_bw_gbs=_opt_float(data, "interconnect_bw_gbs"),
                tdp_w=_opt_float(data, "tdp_w"),
                peak_tflops=_float_map(data, "peak_tflops"),
                memory_type=_opt_str(data, "memory_type"),
                interconnect=_opt_str(data, "interconnect"),
                software_stack=_opt_str(data, "software_stack"),
                collective_library=_opt_str(data, "collective_library"),
                scope=_str(data, "scope"),
                confidence=_str(data, "confidence"),
                notes=_str(data, "notes"),
                sources=_str_tuple(data, "sources"),
                provenance={
                    k: _check_choice(f"provenance[{k!r}]", v, PROVENANCES)
                    for k, v in _str_map(data, "provenance").items()
                },
                figure_confidence={
                    k: _check_choice(f"figure_confidence[{k!r}]", v, CONFIDENCES)
                    for k, v in _opt_str_map(data, "figure_confidence").items()
                },
                estimation_methods=_opt_str_map(data, "estimation_methods"),
            )
            if "emulatable" in data and data["emulatable"] != chip.emulatable:
                raise CatalogDataError("'emulatable' disagrees with the numbers it is derived from")
        except CatalogDataError as exc:
            raise CatalogDataError(f"chip {name!r}: {exc}") from None
        return chip


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmArch:
    """Decoder configuration of an LLM, as its config.json gives it (normalised key names)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    """Size q/k projections from this, not hidden/heads: they differ for Qwen3-32B, Gemma-2."""
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    attention_type: str
    """GQA, MHA or MLA."""
    activation: str
    num_experts: int | None = None
    """Routed experts per MoE layer; None for dense models."""
    experts_per_token: int | None = None
    moe_intermediate_size: int | None = None
    active_params_b: float | None = None
    num_shared_experts: int | None = None
    first_k_dense_replace: int | None = None
    """MoE models whose first k layers use a dense FFN (DeepSeek-V3)."""
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    """MLA: compressed KV width; the cache holds kv_lora_rank + qk_rope_head_dim per layer."""
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    sliding_window: int | None = None
    """Local attention window in tokens, None when every layer attends globally."""
    sliding_window_pattern: int | None = None
    """Every Nth layer is global and the rest use ``sliding_window`` (Gemma-2: 2, alternating);
    None with a window set means every layer slides (Mistral-7B-v0.1)."""

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    def kv_cache_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """KV-cache bytes one token takes over all layers, ignoring any sliding-window bound.

        MLA caches the compressed latent plus the rope key; GQA/MHA cache K and V per KV head.
        """
        if self.kv_lora_rank is not None and self.qk_rope_head_dim is not None:
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_kv_heads * self.head_dim
        return self.num_layers * per_layer * bytes_per_element

    def to_dict(self) -> JsonDict:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_type": self.attention_type,
            "activation": self.activation,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "moe_intermediate_size": self.moe_intermediate_size,
            "active_params_b": self.active_params_b,
            "num_shared_experts": self.num_shared_experts,
            "first_k_dense_replace": self.first_k_dense_replace,
            "q_lora_rank": self.q_lora_rank,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "sliding_window": self.sliding_window,
            "sliding_window_pattern": self.sliding_window_pattern,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LlmArch:
        return cls(
            num_layers=_int(data, "num_layers"),
            hidden_size=_int(data, "hidden_size"),
            num_attention_heads=_int(data, "num_attention_heads"),
            num_kv_heads=_int(data, "num_kv_heads"),
            head_dim=_int(data, "head_dim"),
            intermediate_size=_int(data, "intermediate_size"),
            vocab_size=_int(data, "vocab_size"),
            max_position_embeddings=_int(data, "max_position_embeddings"),
            attention_type=_str(data, "attention_type"),
            activation=_str(data, "activation"),
            num_experts=_opt_int(data, "num_experts"),
            experts_per_token=_opt_int(data, "experts_per_token"),
            moe_intermediate_size=_opt_int(data, "moe_intermediate_size"),
            active_params_b=_opt_float(data, "active_params_b"),
            num_shared_experts=_opt_int(data, "num_shared_experts"),
            first_k_dense_replace=_opt_int(data, "first_k_dense_replace"),
            q_lora_rank=_opt_int(data, "q_lora_rank"),
            kv_lora_rank=_opt_int(data, "kv_lora_rank"),
            qk_nope_head_dim=_opt_int(data, "qk_nope_head_dim"),
            qk_rope_head_dim=_opt_int(data, "qk_rope_head_dim"),
            v_head_dim=_opt_int(data, "v_head_dim"),
            sliding_window=_opt_int(data, "sliding_window"),
            sliding_window_pattern=_opt_int(data, "sliding_window_pattern"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffusionStage:
    """One stage of a diffusion pipeline, per item it processes (a prompt, a latent, an image)."""

    params_m: float
    gflops: float
    """FLOPs per item in units of 1e9 (1 MAC = 2 FLOPs)."""
    activation_mb: float
    """Bytes of every intermediate tensor of one item at fp32, in MB (1e6): what a stage writes
    and reads back besides its weights (the roofline's memory term)."""

    def to_dict(self) -> JsonDict:
        return {
            "params_m": self.params_m,
            "gflops": self.gflops,
            "activation_mb": self.activation_mb,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DiffusionStage:
        stage = cls(
            params_m=_float(data, "params_m"),
            gflops=_float(data, "gflops"),
            activation_mb=_float(data, "activation_mb"),
        )
        if not (stage.params_m > 0 and stage.gflops > 0 and stage.activation_mb >= 0):
            raise CatalogDataError("stage params_m and gflops must be positive")
        return stage


DIFFUSION_STAGES: Final = ("text_encoder", "denoiser", "vae_decoder")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffusionArch:
    """A latent diffusion pipeline's three stages.

    One image costs the text encoder once per prompt (``guidance_batch`` prompts: the prompt and,
    with classifier-free guidance, the empty one), the denoiser ``steps`` times on
    ``guidance_batch`` latents each, and the VAE decoder once.
    """

    denoiser_kind: str
    """``unet`` or ``dit``: what a step runs (reports only)."""
    resolution: int
    """Image side in pixels the figures are for."""
    default_steps: int
    guidance_batch: int
    """Latents per step per image: 2 with classifier-free guidance, 1 without."""
    text_encoder: DiffusionStage
    """Per prompt."""
    denoiser: DiffusionStage
    """Per latent per step."""
    vae_decoder: DiffusionStage
    """Per image."""

    def image_gflops(self, steps: int) -> float:
        """FLOPs of one image in units of 1e9 (the MFU numerator)."""
        return (
            self.guidance_batch * self.text_encoder.gflops
            + steps * self.guidance_batch * self.denoiser.gflops
            + self.vae_decoder.gflops
        )

    def to_dict(self) -> JsonDict:
        return {
            "denoiser_kind": self.denoiser_kind,
            "resolution": self.resolution,
            "default_steps": self.default_steps,
            "guidance_batch": self.guidance_batch,
            "text_encoder": self.text_encoder.to_dict(),
            "denoiser": self.denoiser.to_dict(),
            "vae_decoder": self.vae_decoder.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DiffusionArch:
        def stage(key: str) -> DiffusionStage:
            return DiffusionStage.from_dict(_as_mapping(key, _field(data, key)))

        arch = cls(
            denoiser_kind=_str(data, "denoiser_kind"),
            resolution=_int(data, "resolution"),
            default_steps=_int(data, "default_steps"),
            guidance_batch=_int(data, "guidance_batch"),
            text_encoder=stage("text_encoder"),
            denoiser=stage("denoiser"),
            vae_decoder=stage("vae_decoder"),
        )
        if arch.guidance_batch not in (1, 2):
            raise CatalogDataError("'guidance_batch' must be 1 or 2")
        if not (arch.resolution > 0 and arch.default_steps > 0):
            raise CatalogDataError("'resolution' and 'default_steps' must be positive")
        return arch


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """A published quality figure for a model; value None when the source gives no number."""

    name: str
    value: float | None
    note: str | None = None

    def to_dict(self) -> JsonDict:
        return {"name": self.name, "value": self.value, "note": self.note}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Metric:
        return cls(
            name=_str(data, "name"),
            value=_opt_float(data, "value"),
            note=_opt_str(data, "note"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """A workload model: an LLM (``arch`` set) or an atomic vision/speech/NLP model."""

    name: str
    kind: ModelKind
    task: str
    """Hugging Face pipeline-style task, e.g. ``text-generation``, ``object-detection``."""
    params_b: float
    """Total parameters in billions."""
    sources: tuple[str, ...]
    notes: str
    arch: LlmArch | None = None
    gflops: float | None = None
    """FLOPs per sample at ``input_shape`` in units of 1e9, counting 1 MAC as 2 FLOPs."""
    input_shape: str | None = None
    architecture: str | None = None
    """Free-text description of a non-LLM architecture."""
    reference_metrics: tuple[Metric, ...] = ()
    derived_fields: tuple[str, ...] = ()
    """Fields computed by the catalogue builder rather than copied (see ``notes``)."""
    diffusion: DiffusionArch | None = None
    """The stages of a text-to-image pipeline (kind ``diffusion``)."""

    @property
    def active_params_b(self) -> float | None:
        """Parameters touched per token for MoE models, else None."""
        return self.arch.active_params_b if self.arch is not None else None

    @property
    def reference_metric(self) -> Metric | None:
        """The headline metric (first listed), if any."""
        return self.reference_metrics[0] if self.reference_metrics else None

    def to_dict(self) -> JsonDict:
        return {
            "name": self.name,
            "kind": self.kind,
            "task": self.task,
            "params_b": self.params_b,
            "sources": list(self.sources),
            "notes": self.notes,
            "arch": self.arch.to_dict() if self.arch is not None else None,
            "gflops": self.gflops,
            "input_shape": self.input_shape,
            "architecture": self.architecture,
            "reference_metrics": [m.to_dict() for m in self.reference_metrics],
            "derived_fields": list(self.derived_fields),
            "diffusion": self.diffusion.to_dict() if self.diffusion is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Model:
        name = _str(data, "name")
        try:
            arch_data = data.get("arch")
            arch = None if arch_data is None else LlmArch.from_dict(_as_mapping("arch", arch_data))
            metrics = data.get("reference_metrics", [])
            if not isinstance(metrics, list):
                raise CatalogDataError("'reference_metrics' must be a list")
            model = cls(
                name=name,
                kind=_choice(data, "kind", MODEL_KINDS),
                task=_str(data, "task"),
                params_b=_float(data, "params_b"),
                sources=_str_tuple(data, "sources"),
                notes=_str(data, "notes"),
                arch=arch,
                gflops=_opt_float(data, "gflops"),
                input_shape=_opt_str(data, "input_shape"),
                architecture=_opt_str(data, "architecture"),
                reference_metrics=tuple(
                    Metric.from_dict(_as_mapping("reference_metrics[]", m)) for m in metrics
                ),
                derived_fields=_str_tuple(data, "derived_fields", required=False),
                diffusion=None
                if data.get("diffusion") is None
                else DiffusionArch.from_dict(_as_mapping("diffusion", data.get("diffusion"))),
            )
            # A diffusion model is priced by its stages; any other kind has none to price.
            if (model.kind == "diffusion") != (model.diffusion is not None):
                raise CatalogDataError("'diffusion' is required for kind diffusion, and only then")
            return model
        except CatalogDataError as exc:
            raise CatalogDataError(f"model {name!r}: {exc}") from None


# --- JSON field readers: the catalogue is data, so every shape is checked on load ----------


def _as_mapping(what: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise CatalogDataError(f"{what!r} must be an object, got {type(value).__name__}")
    return cast("Mapping[str, object]", value)


def _field(data: Mapping[str, object], key: str) -> object:
    if key not in data:
        raise CatalogDataError(f"missing field {key!r}")
    return data[key]


def _str(data: Mapping[str, object], key: str) -> str:
    value = _field(data, key)
    if not isinstance(value, str):
        raise CatalogDataError(f"{key!r} must be a string")
    return value


def _opt_str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise CatalogDataError(f"{key!r} must be a string or null")
    return value


def _bool(data: Mapping[str, object], key: str) -> bool:
    value = _field(data, key)
    if not isinstance(value, bool):
        raise CatalogDataError(f"{key!r} must be a boolean")
    return value


def _number(key: str, value: object) -> float:
    # bool is an int subclass; a stray true must not become 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogDataError(f"{key!r} must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise CatalogDataError(f"{key!r} must be finite")
    return result


def _float(data: Mapping[str, object], key: str) -> float:
    return _number(key, _field(data, key))


def _opt_float(data: Mapping[str, object], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else _number(key, value)


def _int(data: Mapping[str, object], key: str) -> int:
    value = _field(data, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogDataError(f"{key!r} must be an integer")
    return value


def _opt_int(data: Mapping[str, object], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _str_tuple(data: Mapping[str, object], key: str, *, required: bool = True) -> tuple[str, ...]:
    value = _field(data, key) if required else data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogDataError(f"{key!r} must be a list of strings")
    return tuple(cast("list[str]", value))


def _float_map(data: Mapping[str, object], key: str) -> dict[str, float]:
    value = _as_mapping(key, _field(data, key))
    return {str(k): _number(f"{key}.{k}", v) for k, v in value.items()}


def _opt_str_map(data: Mapping[str, object], key: str) -> dict[str, str]:
    """Like ``_str_map``, empty when the key is absent (fields added after schema 2)."""
    return _str_map(data, key) if key in data else {}


def _str_map(data: Mapping[str, object], key: str) -> dict[str, str]:
    value = _as_mapping(key, _field(data, key))
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise CatalogDataError(f"'{key}.{k}' must be a string")
        out[str(k)] = v
    return out


def _check_choice(what: str, value: str, choices: tuple[_Choice, ...]) -> _Choice:
    for choice in choices:
        if value == choice:
            return choice
    raise CatalogDataError(f"{what} must be one of {choices}, got {value!r}")


def _choice(data: Mapping[str, object], key: str, choices: tuple[_Choice, ...]) -> _Choice:
    return _check_choice(repr(key), _str(data, key), choices)
