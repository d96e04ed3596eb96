"""Precision names (as the catalogue and CLI spell them) <-> the ``pocgrid.v1.Precision`` enum."""

from __future__ import annotations

from pocgrid.v1 import common_pb2

PRECISION_BY_NAME: dict[str, common_pb2.Precision.ValueType] = {
    "fp32": common_pb2.PRECISION_FP32,
    "tf32": common_pb2.PRECISION_TF32,
    "fp16": common_pb2.PRECISION_FP16,
    "bf16": common_pb2.PRECISION_BF16,
    "fp8": common_pb2.PRECISION_FP8,
    "int8": common_pb2.PRECISION_INT8,
}
PRECISION_NAME: dict[int, str] = {int(v): k for k, v in PRECISION_BY_NAME.items()}


def to_proto(name: str) -> common_pb2.Precision.ValueType:
    try:
        return PRECISION_BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(
            f"precision: must be one of {', '.join(PRECISION_BY_NAME)} (got {name!r})"
        ) from None


def to_name(value: int) -> str:
    return PRECISION_NAME.get(value, "unspecified")
