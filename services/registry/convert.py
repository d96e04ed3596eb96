"""Catalogue records (``pocgrid.catalog``) to their protobuf messages."""

from __future__ import annotations

from pocgrid.catalog import CHIP_SCALAR_FIELDS, Chip, Model
from pocgrid.v1 import registry_pb2


def chip_to_proto(chip: Chip) -> registry_pb2.Chip:
    msg = registry_pb2.Chip(
        name=chip.name,
        display_name=chip.display_name,
        vendor=chip.vendor,
        vendor_family=chip.vendor_family,
        domestic=chip.domestic,
        memory_type=chip.memory_type or "",
        interconnect=chip.interconnect or "",
        peak_tflops=dict(chip.peak_tflops),
        software_stack=chip.software_stack or "",
        collective_library=chip.collective_library or "",
        provenance=dict(chip.provenance),
        figure_confidence=dict(chip.figure_confidence),
        estimation_methods=dict(chip.estimation_methods),
        sources=list(chip.sources),
        notes=chip.notes,
        confidence=chip.confidence,
        emulatable=chip.emulatable,
        scope=chip.scope,
    )
    for name in CHIP_SCALAR_FIELDS:
        value = getattr(chip, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def model_to_proto(model: Model) -> registry_pb2.Model:
    msg = registry_pb2.Model(
        name=model.name,
        kind=model.kind,
        task=model.task,
        params_b=model.params_b,
        sources=list(model.sources),
        notes=model.notes,
    )
    if model.active_params_b is not None:
        msg.active_params_b = model.active_params_b
    if model.gflops is not None:
        msg.gflops = model.gflops
    arch = model.arch
    if arch is not None:
        msg.arch.CopyFrom(
            registry_pb2.LlmArch(
                num_layers=arch.num_layers,
                hidden_size=arch.hidden_size,
                num_attention_heads=arch.num_attention_heads,
                num_kv_heads=arch.num_kv_heads,
                head_dim=arch.head_dim,
                intermediate_size=arch.intermediate_size,
                vocab_size=arch.vocab_size,
                max_position_embeddings=arch.max_position_embeddings,
                num_experts=arch.num_experts or 0,
                experts_per_token=arch.experts_per_token or 0,
                moe_intermediate_size=arch.moe_intermediate_size or 0,
                attention_type=arch.attention_type,
                activation=arch.activation,
                kv_lora_rank=arch.kv_lora_rank or 0,
                qk_rope_head_dim=arch.qk_rope_head_dim or 0,
                sliding_window=arch.sliding_window or 0,
            )
        )
    return msg
