"""The prediction entry point: results, the memory fit check and input errors."""

from __future__ import annotations

import json
import math

import pytest

from pocgrid.perf import Bound, PerfInputError, predict
from pocgrid.perf.errors import UnknownNameInput, UnsupportedInput


def test_offline_prediction_is_consistent() -> None:
    p = predict("A100 80GB SXM", 1, "Llama-2-7B", "fp16", 64, 512, 256)
    assert p.fits and p.why_not_fits is None
    assert p.output_tokens_per_s is not None and p.ttft_ms is not None and p.tpot_ms is not None
    total_s = (p.ttft_ms + 255 * p.tpot_ms) / 1e3
    assert p.output_tokens_per_s == pytest.approx(64 * 256 / total_s)
    assert p.prefill_bound is Bound.COMPUTE
    assert p.decode_bound is Bound.MEMORY
    assert 13 < p.memory_gib < p.memory_available_gib == 80
    doc = json.loads(json.dumps(p.to_dict()))
    for key in ("output_tokens_per_s", "ttft_ms", "tpot_ms", "memory_gib", "fits"):
        assert key in doc


def test_70b_on_one_32gb_device_does_not_fit_and_says_by_how_much() -> None:
    p = predict("bi-v100", 1, "Llama-3.1-70B", "fp16", 1, 128, 128)
    assert p.fits is False
    assert p.output_tokens_per_s is None and p.ttft_ms is None and p.tpot_ms is None
    assert p.prefill_bound is None and p.decode_bound is None
    assert p.memory_available_gib == 32
    assert p.memory_gib > 131  # 70.55 B parameters x 2 bytes = 131.4 GiB, before KV
    assert p.why_not_fits is not None
    assert f"needs {p.memory_gib:.1f} GiB" in p.why_not_fits
    assert "32.0 GiB" in p.why_not_fits


def test_fp8_halves_weight_memory_and_tp_splits_it() -> None:
    bf16 = predict("h100-80gb-sxm", 1, "Llama-3.1-8B", "bf16", 1, 128, 2)
    fp8 = predict("h100-80gb-sxm", 1, "Llama-3.1-8B", "fp8", 1, 128, 2)
    assert fp8.memory_gib < 0.6 * bf16.memory_gib
    tp2 = predict("h100-80gb-sxm", 2, "Llama-3.1-8B", "bf16", 1, 128, 2)
    assert tp2.memory_gib < 0.6 * bf16.memory_gib


def test_replicas_split_the_batch() -> None:
    one = predict("l20-48gb", 1, "Qwen2.5-7B", "fp16", 32, 256, 64)
    four = predict("l20-48gb", 4, "Qwen2.5-7B", "fp16", 128, 256, 64, tp=1)
    assert one.output_tokens_per_s is not None and four.output_tokens_per_s is not None
    assert four.output_tokens_per_s == pytest.approx(4 * one.output_tokens_per_s)
    assert four.output_tokens_per_s_per_device == pytest.approx(one.output_tokens_per_s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": 0}, "batch: must be >= 1"),
        ({"devices": 0}, "devices: must be >= 1"),
        ({"input_len": 0}, "input_len: must be >= 1"),
        ({"output_len": -3}, "output_len: must be >= 1"),
        ({"precision": "fp4"}, "precision: must be one of"),
        ({"scenario": "burst"}, "scenario: must be one of static, max_throughput"),
        ({"scenario": "server"}, "qps: is required when scenario is server"),
        ({"scenario": "server", "qps": 0.0}, "qps: must be > 0"),
        ({"scenario": "server", "qps": math.inf}, "qps: must be > 0"),
        ({"qps": 3.0}, "qps: is only valid with scenario poisson"),
        ({"seed": -1}, "seed: must be >= 0"),
        ({"devices": 3}, "tp: must divide the 32 attention heads"),
        ({"devices": 4, "tp": 3}, "tp: must divide devices"),
        ({"devices": 2, "tp": 1, "batch": 3}, "batch: must be divisible by the 2 replicas"),
        ({"batch": 2.5}, "batch: must be an integer"),
    ],
)
def test_bad_input_names_field_and_rule(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "chip": "a100-80gb-sxm",
        "devices": 1,
        "model": "Llama-2-7B",
        "precision": "fp16",
        "batch": 8,
        "input_len": 128,
        "output_len": 16,
    }
    args.update(kwargs)
    with pytest.raises(PerfInputError) as info:
        predict(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(message)


def test_unknown_names_and_unsupported_combinations() -> None:
    with pytest.raises(UnknownNameInput, match=r"^chip: unknown chip 'a1000'"):
        predict("a1000", 1, "Llama-2-7B", "fp16", 1, 8, 8)
    with pytest.raises(UnknownNameInput, match=r"^model: unknown model"):
        predict("a100-80gb-sxm", 1, "Llama-9", "fp16", 1, 8, 8)
    with pytest.raises(UnsupportedInput, match=r"^model: .* is a vision model"):
        predict("a100-80gb-sxm", 1, "ResNet-50", "fp16", 1, 8, 8)
    # A100 has no fp8 peak; the generic 910B record lists no bf16 figure.
    with pytest.raises(UnsupportedInput, match=r"^precision: a100-80gb-sxm has no published fp8"):
        predict("a100-80gb-sxm", 1, "Llama-2-7B", "fp8", 1, 8, 8)
    with pytest.raises(UnsupportedInput, match=r"^precision: ascend-910b has no published bf16"):
        predict("ascend-910b", 1, "Llama-2-7B", "bf16", 1, 8, 8)
    # C550: FlagPerf measured 83.5 % of an fp16 peak nobody has published; the catalogue
    # assumes the sibling C500's, so the ceiling is an estimate and says so.
    c550 = predict("metax-c550", 1, "Llama-2-7B", "fp16", 1, 8, 8)
    assert c550.efficiency["gemm"] == "estimated"
    # Enflame publishes no peak at all for the S60: nothing to emulate.
    with pytest.raises(UnsupportedInput, match=r"^precision: enflame-s60"):
        predict("enflame-s60", 1, "Llama-2-7B", "fp16", 1, 8, 8)


def test_server_prediction_reports_simulated_percentiles() -> None:
    p = predict(
        "h100-80gb-sxm",
        2,
        "Llama-3.1-8B",
        "fp8",
        64,
        512,
        128,
        "server",
        qps=4.0,
        seed=3,
        requests=1000,
    )
    assert p.fits and p.server is not None
    assert p.output_tokens_per_s is not None
    # Under capacity the deployment keeps up with arrivals: ~ qps x output tokens (the
    # measured span also holds the last request's latency, hence the tolerance).
    assert p.output_tokens_per_s == pytest.approx(4.0 * 128, rel=0.1)
    assert p.ttft_ms is not None and p.tpot_ms is not None and p.ttft_ms > 0 < p.tpot_ms
    again = predict(
        "h100-80gb-sxm",
        2,
        "Llama-3.1-8B",
        "fp8",
        64,
        512,
        128,
        "server",
        qps=4.0,
        seed=3,
        requests=1000,
    )
    assert again.to_dict() == p.to_dict()
