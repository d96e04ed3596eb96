"""An evaluation document shaped as the evaluator writes it, for the renderers' tests.

The figures follow the metric definitions (TPOT from E2EL and TTFT, per-device and per-user
throughput from the sweep) so the charts have something coherent to draw; the evaluator's own
tests check the figures themselves.
"""

from __future__ import annotations

from typing import Any


def _lat(median: float, spread: float) -> dict[str, float]:
    return {
        "mean": median * 1.05,
        "median": median,
        "p90": median * (1 + spread),
        "p99": median * (1 + 2 * spread),
    }


def _result(
    chip: str,
    speed: float,
    *,
    domestic: bool,
    precision: str,
    cost: float,
    accuracy: float | None,
    scenario: str = "llm-chat",
) -> dict[str, Any]:
    tpot = 12.0 / speed
    ttft = 80.0 / speed
    out_len = 256
    e2el = ttft + tpot * (out_len - 1)
    curve = []
    for c in (1, 2, 4, 8, 16, 32, 64):
        step = tpot * (1 + c / 24)
        per_user = 1000.0 / step
        total = per_user * c
        curve.append(
            {
                "concurrency": c,
                "qps": total / out_len,
                "output_tokens_per_s": total,
                "output_tokens_per_s_per_user": per_user,
                "output_tokens_per_s_per_device": total / 8,
                "ttft_p99_ms": ttft * (1 + c / 16),
                "tpot_p99_ms": step * 1.2,
                "e2el_p99_ms": (ttft + step * out_len) * 1.2,
                "slo_met": step * 1.2 < 50,
                "steady": True,
            }
        )
    met = tpot * 1.3 < 50
    return {
        "chip": chip,
        "vendor": chip.split("-")[0],
        "domestic": domestic,
        "scenario": scenario,
        "model": "Qwen2.5-7B",
        "devices": 8,
        "precision": precision,
        "profile": "vendor-vllm" if domestic else "trtllm-0.17-ifb",
        "mode": "server",
        "runnable": True,
        "reason": "",
        "requests": 200,
        "measured_requests": 180,
        "offered_qps": 4.0,
        "concurrency": 0,
        "duration_s": 45.0,
        "request_throughput": 4.0,
        "output_tokens_per_s": 4.0 * out_len,
        "total_tokens_per_s": 4.0 * (out_len + 512),
        "ttft_ms": _lat(ttft, 0.4),
        "tpot_ms": _lat(tpot, 0.2),
        "itl_ms": _lat(tpot, 0.5),
        "e2el_ms": _lat(e2el, 0.2),
        "goodput": 3.6 if met else 0.4,
        "accuracy": accuracy,
        "cost": {"per_million_tokens": cost, "currency": "CNY"},
        "energy_wh": 12.5 / speed,
        "slo_met": met,
        "verdict": "VALID" if met else "INVALID",
        "curve": curve,
    }


def sample_doc() -> dict[str, Any]:
    results = [
        _result("ascend-910b2", 1.0, domestic=True, precision="bf16", cost=3.2, accuracy=None),
        _result("mlu370-x8", 0.35, domestic=True, precision="fp16", cost=2.1, accuracy=None),
        _result("a100-80gb-sxm", 1.1, domestic=False, precision="bf16", cost=5.0, accuracy=None),
        {
            "chip": "enflame-i20",
            "domestic": True,
            "scenario": "llm-chat",
            "devices": 8,
            "precision": "",
            "runnable": False,
            "reason": "Qwen2.5-7B needs 15.2 GiB per device; enflame-i20 has 14 GiB",
            "verdict": "INVALID",
            "slo_met": False,
        },
    ]
    digits = []
    for chip, prec, acc in (
        ("ascend-910b2", "fp16", 0.9722),
        ("ascend-910b2", "int8", 0.9611),
        ("mlu370-x8", "fp16", 0.9722),
        ("a100-80gb-sxm", "fp16", 0.9722),
    ):
        r = _result(
            chip,
            1.0,
            domestic=chip != "a100-80gb-sxm",
            precision=prec,
            cost=0.05,
            accuracy=acc,
            scenario="image-classification",
        )
        r["output_tokens_per_s"] = 0.0
        r["total_tokens_per_s"] = 0.0
        r["cost"] = {"per_thousand_samples": 0.05, "currency": "CNY"}
        r.pop("tpot_ms")
        r.pop("itl_ms")
        for p in r["curve"]:
            p.pop("output_tokens_per_s_per_user")
        digits.append(r)
    return {
        "evaluation_id": "ev-test",
        "scenario": "finance",
        "model": "Qwen2.5-7B",
        "slo": {"ttft_p99_ms": 200.0, "tpot_p99_ms": 50.0, "e2el_p99_ms": None},
        "results": results + digits,
        "recommendation": {
            "cheapest": "ascend-910b2",
            "cheapest_reason": "3.20 CNY per million tokens, the lowest meeting the SLO",
            "fastest": "a100-80gb-sxm",
            "fastest_reason": "1126 output tokens/s",
            "best_domestic": "ascend-910b2",
            "best_domestic_reason": "meets the SLO",
            "summary": "Choose ascend-910b2.",
        },
    }
