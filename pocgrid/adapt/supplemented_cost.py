"""What supplementation costs an LLM deployment, as extra rows of the performance model's table.

A fused vendor kernel (Attention, RotaryEmbedding, RMSNormalization) reads its inputs once and
writes its output once. Its rewrite into primitives runs one kernel per primitive, each a full
pass over its tensor in device memory; the decomposed Attention also materialises the score
matrix (about ten passes over it: MatMul, mask Add, ReduceMax, Sub, Exp, ReduceSum, Div, the
NaN guard, the second MatMul's read) and, having no in-place cache update, copies the whole
KV cache by Concat every step. An operator that runs on the host crosses the host link twice
per step. These rows are added to the deployment's table, so every estimate (static batch,
steady state, the serving simulator) pays them through the one performance model.

The pass counts are read off the rewrites in :mod:`pocgrid.adapt.rewrites`; what fraction of
them a vendor graph compiler would fuse back is not known, so the costs are an upper bound
(marked *estimate* in every plan).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Final

import numpy as np

from pocgrid.adapt.coverage import Method
from pocgrid.adapt.hostlink import TRANSFER_LATENCY_S, HostLink
from pocgrid.catalog import Chip, Model
from pocgrid.perf.llm import (
    F_DEC_CTX,
    F_DEC_CTX_WIN,
    F_PRE_PAIRS,
    F_PRE_PAIRS_WIN,
    F_TOKENS,
    FEATURES,
    LlmDeployment,
)
from pocgrid.perf.roofline import OpTable

#: Extra full-tensor passes of each rewrite over what the fused kernel moves.
SCORE_PASSES: Final = 10
ROTARY_PASSES: Final = 10
NORM_PASSES: Final = 6
GELU_PASSES: Final = 6


class SupplementedDeployment(LlmDeployment):
    """An :class:`LlmDeployment` that also pays for the operators it supplements."""

    def __init__(
        self,
        chip: Chip,
        model: Model,
        precision: str,
        tp: int,
        *,
        supplemented: Mapping[str, Method],
        host_counts: Mapping[str, int],
        host_link: HostLink,
        kv_bytes: int | None = None,
    ) -> None:
        super().__init__(chip, model, precision, tp)
        if kv_bytes is not None:
            self.kv_bytes = kv_bytes
        self.supplemented = dict(supplemented)
        self.host_counts = dict(host_counts)
        self.host_link = host_link

    def extra_rows(self) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
        """(name, memory bytes row, host-link bytes row, fixed seconds per step) per cost."""
        s, tp = self.shape, self.tp
        ab = float(self.act_bytes)
        n = len(FEATURES)
        rows: list[tuple[str, np.ndarray, np.ndarray, float]] = []
        sup = {op for op, m in self.supplemented.items() if m == "rewrite"}
        if "Attention" in sup:
            b = np.zeros(n)
            heads_dev = self.heads_per_device
            b[F_PRE_PAIRS] = s.global_layers * heads_dev * SCORE_PASSES * ab
            b[F_PRE_PAIRS_WIN] = s.window_layers * heads_dev * SCORE_PASSES * ab
            kv_layer = self.kv_elems_per_layer_device * self.kv_bytes
            group = max(1.0, heads_dev / max(1.0, float(np.ceil(s.kv_heads / tp))))
            # scores per cached token, the Concat copy of the cache (read + write), and the
            # grouped-query Expand that writes and reads each KV head once per query head
            per_ctx = heads_dev * SCORE_PASSES * ab + kv_layer * (2 + 2 * (group - 1))
            b[F_DEC_CTX] = s.global_layers * per_ctx
            b[F_DEC_CTX_WIN] = s.window_layers * per_ctx
            rows.append(("supplement: Attention decomposed", b, np.zeros(n), 0.0))
        if "RotaryEmbedding" in sup:
            b = np.zeros(n)
            width = (s.heads + s.kv_heads) * s.head_dim / tp
            b[F_TOKENS] = s.num_layers * ROTARY_PASSES * width * ab
            rows.append(("supplement: RotaryEmbedding decomposed", b, np.zeros(n), 0.0))
        for norm in ("RMSNormalization", "LayerNormalization"):
            if norm in sup:
                b = np.zeros(n)
                b[F_TOKENS] = s.num_layers * 2 * NORM_PASSES * s.hidden * ab
                rows.append((f"supplement: {norm} decomposed", b, np.zeros(n), 0.0))
        if "Gelu" in sup:
            b = np.zeros(n)
            b[F_TOKENS] = s.num_layers * GELU_PASSES * s.ffn_width / tp * ab
            rows.append(("supplement: Gelu decomposed", b, np.zeros(n), 0.0))
        for op, count in sorted(self.host_counts.items()):
            link = np.zeros(n)
            # Each host operator ships one hidden-sized activation per token out and back.
            link[F_TOKENS] = count * 2 * s.hidden * ab
            rows.append((f"host: {op}", np.zeros(n), link, count * 2 * TRANSFER_LATENCY_S))
        return rows

    @cached_property
    def op_table(self) -> OpTable:
        base: OpTable = LlmDeployment.op_table.func(self)  # type: ignore[attr-defined]
        extra = self.extra_rows()
        if not extra:
            return base
        n = len(FEATURES)
        gemm = float(self.ceilings.gemm.rate)
        return OpTable(
            names=[*base.names, *(r[0] for r in extra)],
            features=base.features,
            flops=np.vstack([base.flops, np.zeros((len(extra), n))]),
            bytes_moved=np.vstack([base.bytes_moved, *(r[1] for r in extra)]),
            comm_bytes=np.vstack([base.comm_bytes, *(r[2] for r in extra)]),
            compute_flops_per_s=np.concatenate([base.compute_flops_per_s, [gemm] * len(extra)]),
            memory_bytes_per_s=np.concatenate(
                [base.memory_bytes_per_s, [self.ceilings.memory.rate] * len(extra)]
            ),
            link_bytes_per_s=np.concatenate(
                [
                    base.link_bytes_per_s,
                    [self.host_link.bytes_per_s if r[0].startswith("host") else 1.0 for r in extra],
                ]
            ),
            op_overhead_s=np.concatenate([base.op_overhead_s, [r[3] for r in extra]]),
            fixed_overhead_s=base.fixed_overhead_s,
            overlap_exponent=base.overlap_exponent,
        )
